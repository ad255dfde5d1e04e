"""Test tiers: every collected test gets exactly one marker, ``unit``, ``broker`` or ``system``.

- ``system``: the test starts whole processes (``observer up`` or another CLI as a
  subprocess, its own Tansu broker, Prometheus, Spark, Chromium, kubectl, promtool, mkdocs):
  its module or its own name is listed in :data:`SYSTEM`, or it uses a fixture of
  :data:`SYSTEM_FIXTURES`.
- ``broker``: the test uses the shared embedded broker (the ``broker`` fixture, directly or
  through ``kafka_config`` / ``topics`` or any other fixture: pytest's closure of the test's
  fixtures is what is read).
- ``unit``: everything else, doctests included: in-process, no broker, seconds in all.

``make test`` runs every tier; ``make test-unit`` (``pytest -m unit``) the fast one. A test
that starts processes outside the shared broker must be listed here, or it lands in ``unit``.

>>> tier("tests/test_e2e.py::test_demo", (), doctest=False)
'system'
>>> tier("tests/test_bus.py::test_roundtrip[2]", ("kafka_config", "broker"), doctest=False)
'broker'
>>> tier("drift/sketch.py::drift.sketch", (), doctest=True)
'unit'
"""

from __future__ import annotations

from collections.abc import Iterable

TIERS = ("unit", "broker", "system")

SYSTEM: frozenset[str] = frozenset({
    # Whole modules: every test starts processes (or shares a fixture that does).
    "tests/test_chaos_kill9.py",  # observer up, SIGKILL
    "tests/test_chaos_sigstop.py",  # observer up, SIGSTOP
    "tests/test_e2e.py",  # observer up
    "tests/test_deploy_kubernetes.py",  # kubectl kustomize
    "tests/test_deploy_overlays.py",  # kubectl kustomize
    "tests/test_deploy_checkov.py",  # kubectl kustomize, observer pipeline render, checkov
    "tests/test_deploy_prometheus.py",  # promtool
    "tests/test_docs.py",  # mkdocs build
    "tests/test_drift_restart.py",  # observer drift processes, killed
    "tests/test_pipeline_spark.py",  # PySpark (a JVM)
    "tests/test_repository.py",  # git ls-files
    "tests/test_triggers_faults.py",  # trigger stage children, killed
    "tests/test_triggers_restart.py",  # trigger stage children, killed
    "tests/test_tiers.py",  # collects the whole suite in a child pytest
    "tests/test_workers.py::test_two_workers_answer_as_one_observer_and_a_dead_worker_stops_it",
    "tests/test_workers.py::test_a_sigkilled_observer_leaves_no_worker",  # observer up
    "tests/test_workers.py::test_workers_below_one_is_refused",  # observer up
    "tests/test_workers.py::test_a_stage_a_worker_cannot_build_fails_the_start_naming_it",
    "tests/test_workers.py::test_a_worker_silent_past_one_answer_is_waited_for",
    # Single tests in otherwise in-process modules.
    "tests/test_collectors_otlp_http.py::test_kafka_down_is_503_with_retry_after",  # own Tansu
    "tests/test_drift_offline.py::test_the_command_line",  # observer drift score
    "tests/test_drift_reports.py::test_chromium_renders_the_served_report_without_network",
    "tests/test_drift_reports.py::"
    "test_offline_reports_render_without_network_and_a_cdn_reference_is_caught",  # Chromium
    "tests/test_durability.py::test_one_state_directory_serves_one_observer_at_a_time",
    "tests/test_eval_join.py::test_observer_up_durable_restart_keeps_the_join_state",  # Tansu
    "tests/test_embedders.py::test_same_vectors_in_another_process",  # a Python child
    # A receiver replica in a spawned Python child (both cores busy).
    "tests/test_chaos_receivers.py::test_100k_hostile_bodies_never_5xx",
    # A Python child with collectors.normalize._text_scan blocked.
    "tests/test_text_scan.py::test_without_the_extension_the_stage_runs_the_same",
    # A child process with the optional packages blocked (tests/extras_probe.py).
    "tests/test_extras.py::test_the_core_stages_run_without_any_extra",
    "tests/test_extras.py::test_a_feature_without_its_extra_fails_at_start_naming_it",
    "tests/test_gpu_nvml.py::test_without_nvml_it_says_so_and_exits_non_zero",
    "tests/test_gpu_replay.py::test_cli_replay_to_stdout",
    "tests/test_raw_topic_encryption.py::test_observer_up_with_tenants_seals_the_raw_topics",
    "tests/test_tls.py::test_kafka_tls_options_reach_both_clients",  # Tansu behind TLS
    "tests/test_triggers_approval.py::test_held_until_approved_on_the_command_line",
    "tests/test_fleet_topology.py::test_gpu_economics_roll_up_per_cluster_and_for_the_fleet",
    "tests/test_fleet_topology.py::test_the_fleet_rule_test_can_fail",  # promtool
})
"""Modules (``tests/test_x.py``) and single tests (``tests/test_x.py::test_name``, every
parametrisation) of the ``system`` tier."""

SYSTEM_FIXTURES: frozenset[str] = frozenset({"start_prometheus"})
"""Fixtures that start a whole process: a test using one is ``system``."""

BROKER_FIXTURES: frozenset[str] = frozenset({"broker"})
"""The shared embedded broker; ``kafka_config`` and ``topics`` depend on it."""


def skipped_under(markexpr: str, module: str) -> bool:
    """True when ``-m unit`` alone is asked for and ``module`` is a whole ``system`` module:
    it is then not even imported (some parametrise by running a tool, such as kubectl).

    >>> skipped_under("unit", "tests/test_e2e.py"), skipped_under("", "tests/test_e2e.py")
    (True, False)
    """
    return markexpr.strip() == "unit" and module in SYSTEM


def tier(nodeid: str, fixtures: Iterable[str], *, doctest: bool) -> str:
    """The tier of the test ``nodeid`` (as pytest writes it, from the repository root) whose
    fixture closure is ``fixtures``."""
    if doctest:
        return "unit"
    parts = nodeid.split("::")
    module, name = parts[0], parts[-1].split("[", 1)[0]
    used = set(fixtures)
    if module in SYSTEM or f"{module}::{name}" in SYSTEM or used & SYSTEM_FIXTURES:
        return "system"
    if used & BROKER_FIXTURES:
        return "broker"
    return "unit"
