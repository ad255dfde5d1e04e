"""Shared fixtures: one real embedded broker (Tansu) for the whole session."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from observer.core.broker import EmbeddedBroker
from observer.core.bus import ensure_topics
from observer.core.config import KafkaConfig
from observer.core.topics import Topics
from tests.tiers import skipped_under, tier
from tests.triggers_support import Servers, argo_and_webhooks, emptied


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(name="free_port")
def free_port_fixture():
    """A function returning a free loopback port."""
    return free_port


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(f"127.0.0.1:{free_port()}").start()
    try:
        yield b
    finally:
        # Memory-only and the session is over: nothing to keep. On SIGTERM Tansu waits ~5 s
        # for the clients still connected (some tests leave one); kill it after 0.5 s.
        b.stop(timeout_s=0.5)


@pytest.fixture
def kafka_config(broker: EmbeddedBroker) -> KafkaConfig:
    """A Kafka config on the shared broker with topics unique to this test.

    Group timeouts are short: joins against Tansu take ~23 s with the defaults, ~3 s here.
    """
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(
        bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=f"t{tag}.",
        otlp_topic_prefix=f"t{tag}.",
        partitions=2,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
    )
    ensure_topics(cfg, Topics.from_config(cfg))
    return cfg


@pytest.fixture
def topics(kafka_config: KafkaConfig) -> Topics:
    return Topics.from_config(kafka_config)


@pytest.fixture(scope="session")
def start_prometheus():
    """A function starting a real Prometheus (Debian's binary) on a free loopback port:
    ``start_prometheus({"job": ["127.0.0.1:8000"]}, scrape_interval="1s", jobs=[...])`` returns
    a started :class:`tests.prometheus_harness.PrometheusServer`; all stop at session end."""
    from tests.prometheus_harness import PrometheusServer

    started: list[PrometheusServer] = []

    def start(targets=None, **options):
        server = PrometheusServer(targets, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def scraped(start_prometheus):
    """The GPU collector's Prometheus scene (tests/gpu_support.py), once per session: read by
    tests/test_gpu_prometheus.py and tests/test_dashboards_gpu.py."""
    from tests.gpu_support import scraped_scene

    yield from scraped_scene(start_prometheus)


@pytest.fixture
def exposition_server():
    """A function serving ``render()`` (exposition text) on a free port for Prometheus to
    scrape; returns a started :class:`tests.prometheus_harness.ExpositionServer`."""
    from tests.prometheus_harness import ExpositionServer

    started: list[ExpositionServer] = []

    def start(render):
        server = ExpositionServer(render).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def trigger_servers() -> Iterator[Servers]:
    """The contract Argo server and a verifying webhook receiver, once per test module."""
    with argo_and_webhooks() as running:
        yield running


@pytest.fixture
def trigger_env(trigger_servers: Servers) -> Servers:
    """The module's Argo and webhook servers, emptied of what earlier tests left."""
    return emptied(trigger_servers)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Under ``-m unit``, modules that are ``system`` whole are not collected at all."""
    try:
        module = collection_path.relative_to(config.rootpath).as_posix()
    except ValueError:
        return None
    return True if skipped_under(config.option.markexpr, module) else None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (it renames grouped tests)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier, ``unit``, ``broker`` or ``system`` (tests/tiers.py),
    and the ``system`` ones with one xdist group."""
    from _pytest.doctest import DoctestItem

    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        marker = tier(item.nodeid, fixtures, doctest=isinstance(item, DoctestItem))
        item.add_marker(marker)
        if marker == "system":
            # `make test` runs the suite in two processes (pytest-xdist, --dist loadgroup):
            # whole-process tests share one of them, one at a time, so that two observers
            # with their workers and brokers never compete for the cores and their timeouts.
            item.add_marker(pytest.mark.xdist_group("system"))
