"""Peer drift (drift.peer): a cluster against its fleet.

Three clusters serve the same model. Every cluster's window holds the same values (a fixed
grid of normal quantiles, so no statistic depends on sampling noise); in the drift phase one
cluster's latencies move by 0.2 standard deviations. The normalised Wasserstein distance of
that cluster against its own past and against its peers is then 0.2 (threshold 0.1), while
the fleet-wide segment, where one record in three moved, sees 0.067: quiet.
"""

from __future__ import annotations

import gc
import random
import tracemalloc
from statistics import NormalDist

import pytest
from observer.core.compacted import MemoryCompactedStore
from observer.drift.config import DriftConfig, FeatureSpec
from observer.drift.engine import DriftEngine
from observer.drift.peer import PeerDrift
from observer.drift.peer_config import PeerDriftConfig
from observer.drift.peer_state import peer_key, sketch_budget_bytes
from observer.triggers.config import PolicyConfig
from observer.triggers.policy import PolicyTracker
from prometheus_api_client import PrometheusConnect
from prometheus_client import REGISTRY, generate_latest

from observer.core.bus import Message, make_producer
from observer.core.config import KafkaConfig
from observer.core.records import DriftResult, LLMCall, decode, encode
from observer.core.topics import Topics
from tests.dashboard_queries import dashboard_queries, describe, expand, queries_without_data
from tests.drift_support import TOPICS, Runner, drain_results, engine_running, results_of

N = 200  # records per cluster per window (count windows and peer windows alike)
T0_S = 1_700_000_000  # a multiple of N: peer windows and count windows line up
CLUSTERS = ("eu-1", "us-1", "ap-1")
GRID = [100 + 10 * NormalDist().inv_cdf((i + 0.5) / N) for i in range(N)]
ORDER = [(i * 37) % N for i in range(N)]  # every value once per window, not sorted
SHIFT = 2.0  # 0.2 standard deviations

FEATURES = {"llm": [FeatureSpec(name="latency_ms", kind="numeric")]}


def config(segment_keys: list[str], peer: bool, **settings) -> DriftConfig:
    return DriftConfig(**{
        "window_size": N, "reference": "first_window", "numeric_method": "wasserstein",
        "features": FEATURES, "degradation": {}, "checkpoints": False,
        "segment_keys": segment_keys,
        "peer": PeerDriftConfig(enabled=peer, window_s=N, lateness_s=10, min_records=50),
        **settings,
    })


def traffic(drifting: set[str], windows: int = 4, drift_from: int = 2,
            shift: float = SHIFT) -> list[LLMCall]:
    """One record per cluster per second, ``windows`` windows and a 20 s tail that closes the
    last peer window; ``drifting`` clusters shift from window ``drift_from`` on."""
    out = []
    for step in range(windows * N + 20):
        for cluster in CLUSTERS:
            value = GRID[ORDER[step % N]]
            if cluster in drifting and step >= drift_from * N and step < windows * N:
                value += shift
            out.append(LLMCall(service="shop", model="m1", cluster=cluster,
                               trace_id=f"{cluster}-{step}", span_id="s", latency_ms=value,
                               start_time_unix_nano=(T0_S + step) * 10**9))
    return out


def as_messages(records: list[LLMCall], topics: Topics) -> list[Message]:
    # Keyed by the fleet segment: a segment's clusters share one partition (drift.peer).
    return [Message(topics.llm, 0, i, b"shop|m1", encode(r), (T0_S + 900) * 1000)
            for i, r in enumerate(records)]


def split(results: list[DriftResult]) -> tuple[dict, dict, dict]:
    """(per-cluster past-only, fleet-wide past-only, peer) verdicts by (cluster, window)."""
    own, fleet, peer = {}, {}, {}
    for r in results:
        if r.comparison == "fleet":
            peer[(r.cluster, r.window_index - T0_S // N)] = r
        elif "cluster" in r.segment:
            own[(r.segment["cluster"], r.window_index)] = r
        else:
            fleet[r.window_index] = r
    return own, fleet, peer


def test_one_drifting_cluster_is_flagged_alone(kafka_config: KafkaConfig, topics: Topics) -> None:
    producer = make_producer(kafka_config)
    for record in traffic({"ap-1"}):
        producer.send(topics.llm, key=b"shop|m1", value=encode(record),
                      timestamp_ms=(T0_S + 900) * 1000)
    producer.flush()
    producer.close()
    per_cluster = config(["service", "model", "cluster"], peer=True)
    fleet_wide = config(["service", "model"], peer=False, window_size=3 * N)
    with engine_running(kafka_config, per_cluster, topics), \
            engine_running(kafka_config, fleet_wide, topics):
        # 3 clusters x 3 scored windows, 3 fleet-wide windows, 3 clusters x 4 peer windows
        results = drain_results(kafka_config, topics.drift, 9 + 3 + 12)
    own, fleet, peer = split(results)
    assert len(own) == 9 and len(fleet) == 3 and len(peer) == 12

    # Peer drift flags the drifting cluster alone, in the drift phase only.
    flagged = sorted(k for k, r in peer.items() if r.dataset_drift)
    assert flagged == [("ap-1", 2), ("ap-1", 3)]
    blamed = peer[("ap-1", 2)]
    assert blamed.peer_clusters == ["eu-1", "us-1"] and blamed.n_reference == 2 * N
    assert blamed.n_current == N and blamed.segment_key == "shop|m1|ap-1"
    (feature,) = blamed.features
    assert feature.statistic == pytest.approx(SHIFT / 10, rel=0.02)
    # Before the drift, each cluster is judged against the two others, all alike.
    assert peer[("eu-1", 1)].peer_clusters == ["ap-1", "us-1"]
    assert peer[("eu-1", 1)].features[0].statistic == pytest.approx(0, abs=1e-9)

    # Its own past-only drift agrees; the others' past is quiet.
    assert sorted(k for k, r in own.items() if r.dataset_drift) == [("ap-1", 2), ("ap-1", 3)]
    assert own[("ap-1", 2)].comparison == "past" and own[("ap-1", 2)].cluster == ""

    # The fleet-wide segment stays quiet: one record in three moved.
    assert not any(r.dataset_drift for r in fleet.values())
    assert fleet[2].features[0].statistic == pytest.approx(SHIFT / 3 / 10, rel=0.05)


def run_in_process(cfg: DriftConfig, records: list[LLMCall], store=None) -> list[DriftResult]:
    topics = Topics.from_config(KafkaConfig())
    engine = DriftEngine(cfg, topics, store=store)
    outputs = engine.process(as_messages(records, topics))
    return [decode(o.value) for o in outputs if o.topic == topics.drift]  # type: ignore[misc]


def test_a_fleet_wide_shift_is_blamed_on_no_cluster() -> None:
    results = run_in_process(config(["service", "model", "cluster"], peer=True),
                             traffic(set(CLUSTERS)))
    own, _, peer = split(results)
    assert len(peer) == 12 and not any(r.dataset_drift for r in peer.values())
    # Every cluster did move against its own past.
    assert sorted(k for k, r in own.items() if r.dataset_drift) == sorted(
        (c, w) for c in CLUSTERS for w in (2, 3))


def test_a_far_drifted_cluster_does_not_drag_its_peers_along() -> None:
    """Shifted by 3 standard deviations, ap-1 makes half of each healthy cluster's pool: it is
    blamed first and left out, so the healthy two are judged against each other."""
    results = run_in_process(config(["service", "model", "cluster"], peer=True),
                             traffic({"ap-1"}, shift=30.0))
    _, _, peer = split(results)
    assert sorted(k for k, r in peer.items() if r.dataset_drift) == [("ap-1", 2), ("ap-1", 3)]
    assert peer[("eu-1", 2)].peer_clusters == ["us-1"]
    assert peer[("ap-1", 2)].peer_clusters == ["eu-1", "us-1"]


def test_a_large_fleet_is_pooled_as_sketches_in_one_pass() -> None:
    """20 clusters (beyond BLAME_CLUSTERS): peers pooled as sketches, each cluster scored once;
    the one that moved by 0.3 standard deviations is the only one flagged."""
    cfg = config(["service", "model", "cluster"], peer=True)
    peer = PeerDrift(cfg, FEATURES, {"llm": ["service", "model", "cluster"]})
    clusters = [f"c{i:02d}" for i in range(20)]
    results = []
    for step in range(2 * N + 20):
        for cluster in clusters:
            value = GRID[ORDER[step % N]] + (3.0 if cluster == "c07" and N <= step < 2 * N else 0)
            rec = LLMCall(service="shop", model="m1", cluster=cluster, trace_id="t", span_id="s",
                          latency_ms=value, start_time_unix_nano=(T0_S + step) * 10**9)
            results += peer.observe("llm", rec, [{"latency_ms": value}],
                                    rec.start_time_unix_nano, 0, closed_at=0)
    assert len(results) == 2 * 20
    assert [(r.cluster, r.window_index - T0_S // N) for r in results if r.dataset_drift] == [
        ("c07", 1)]
    assert all(len(r.peer_clusters) == 19 for r in results)


def test_exact_windows_turn_into_sketches_past_their_cap() -> None:
    cfg = config(["service", "model", "cluster"], peer=True)
    cfg = cfg.model_copy(update={"peer": cfg.peer.model_copy(update={"max_exact_rows": 50})})
    peer = PeerDrift(cfg, FEATURES, {"llm": ["service", "model", "cluster"]})
    for rec in traffic(set(), windows=1)[:3 * 60]:  # 60 records per cluster, one window
        peer.observe("llm", rec, [{"latency_ms": rec.latency_ms}], rec.start_time_unix_nano, 0,
                     closed_at=0)
    (stores,) = peer.segments[("shop|m1", "llm")].windows.values()
    assert {type(s).__name__ for s in stores.values()} == {"SketchValues"}
    assert [s.n for s in stores.values()] == [60, 60, 60]


def test_the_cluster_need_not_be_a_segment_key() -> None:
    """Peer drift with fleet-wide past-only streams: the fleet result names the cluster."""
    results = run_in_process(config(["service", "model"], peer=True, window_size=3 * N),
                             traffic({"eu-1"}))
    _, fleet, peer = split(results)
    assert not any(r.dataset_drift for r in fleet.values())
    assert sorted(k for k, r in peer.items() if r.dataset_drift) == [("eu-1", 2), ("eu-1", 3)]
    assert peer[("eu-1", 2)].segment == {"service": "shop", "model": "m1", "cluster": "eu-1"}


def test_too_few_clusters_judge_no_one() -> None:
    records = [r for r in traffic({"ap-1"}) if r.cluster != "us-1"]
    results = run_in_process(config(["service", "model", "cluster"], peer=True), records)
    assert not [r for r in results if r.comparison == "fleet"]


def test_hostile_times_and_clusters_are_left_out() -> None:
    cfg = config(["service", "model", "cluster"], peer=True)
    peer = PeerDrift(cfg, FEATURES, {"llm": ["service", "model", "cluster"]})

    def feed(cluster: str, t_s: float, kafka_ms: int = 0) -> None:
        rec = LLMCall(service="shop", model="m1", cluster=cluster, trace_id="t", span_id="s",
                      latency_ms=1.0, start_time_unix_nano=int(t_s * 10**9))
        peer.observe("llm", rec, [{"latency_ms": 1.0}], rec.start_time_unix_nano, kafka_ms,
                     closed_at=0)

    feed("", T0_S)  # no cluster named
    assert not peer.segments
    feed("eu-1", T0_S + 10 * N, kafka_ms=T0_S * 1000)  # ten windows ahead of its Kafka time
    assert not peer.segments
    feed("eu-1", T0_S)
    feed("eu-1", T0_S + 2 * N)  # closes the first window
    feed("us-1", T0_S)  # late: its window closed
    (seg,) = peer.segments.values()
    assert seg.clusters == {"eu-1"} and list(seg.windows) == [T0_S // N + 2]


def test_peer_state_survives_a_restart_exactly() -> None:
    """Half the traffic, a checkpoint, a new engine restored from it, the other half: the same
    fleet results as one engine that never stopped (sketch mode)."""
    cfg = config(["service", "model", "cluster"], peer=True, mode="sketch", checkpoints=True)
    records = traffic({"ap-1"})
    topics = Topics.from_config(KafkaConfig())
    messages = as_messages(records, topics)
    whole = [decode(o.value) for o in DriftEngine(cfg, topics, store=MemoryCompactedStore(
        topics.drift_state)).process(messages) if o.topic == topics.drift]

    store = MemoryCompactedStore(topics.drift_state)
    cut = 1000  # inside the second peer window
    first = DriftEngine(cfg, topics, store=store)
    outputs = first.process(messages[:cut])
    store.apply(outputs + first.tick())
    assert peer_key("llm", "shop|m1", "eu-1") in store.load()
    second = DriftEngine(cfg, topics, store=store)
    outputs += second.process(messages[cut:])
    resumed = [decode(o.value) for o in outputs if o.topic == topics.drift]

    def fleet(results: list) -> list[tuple]:
        return sorted((r.cluster, r.window_index, r.n_current, r.n_reference, r.dataset_drift,
                       round(r.features[0].statistic, 12))
                      for r in results if r.comparison == "fleet")

    # The first engine's last batch closed window 0: its results are published again by the
    # restore (at least once), identical; everything else exactly as without the restart.
    assert sorted(set(fleet(resumed))) == fleet(whole)
    again = [f for f in fleet(resumed) if fleet(resumed).count(f) > 1]
    assert {f[1] - T0_S // N for f in again} == {0}
    assert len(fleet(whole)) == 12 and sum(f[4] for f in fleet(whole)) == 2


@pytest.mark.parametrize(("seed", "mode"), [(1, "exact"), (2, "exact"), (3, "sketch"),
                                            (4, "sketch")])
def test_peer_results_survive_kills_at_least_once_and_unchanged(seed: int, mode: str) -> None:
    """The engine killed every few batches with any subset of the killed batch's outputs
    acknowledged (tests.drift_support's harness): every peer result is published, at least
    once, with exactly the figures of an engine that never stopped."""
    cfg = config(["service", "model", "cluster"], peer=True, checkpoints=True, mode=mode)
    stream = as_messages(traffic({"ap-1"}), TOPICS)

    def fleet(outputs: list) -> list[tuple]:
        # (sketches fold values in batches: a restart may round the last digit differently)
        return [(r.cluster, r.window_index, r.n_current, r.n_reference, r.dataset_drift,
                 round(r.features[0].statistic, 12))
                for r in results_of(outputs) if r.comparison == "fleet"]

    whole = Runner(cfg)
    engine = whole.engine()
    for i in range(0, len(stream), 150):
        whole.acknowledge(engine.process(stream[i:i + 150]) + engine.tick())
        whole.commit(stream[i:i + 150])
    expected = sorted(fleet(whole.produced))
    assert len(expected) == 12 and len(set(expected)) == 12

    rnd = random.Random(seed)
    runner = Runner(cfg)
    kills = 0
    while runner.pending(stream):
        engine = runner.engine()
        crash_after = rnd.randint(0, 3)
        for iteration in range(crash_after + 1):
            part = runner.pending(stream)[:rnd.choice([150, 40])]
            if not part:
                break
            outputs = engine.process(part) + engine.tick()
            if iteration == crash_after:
                runner.acknowledge([o for o in outputs if rnd.random() < 0.5])
                kills += 1
                break
            runner.acknowledge(outputs)
            runner.commit(part)
    assert kills >= 5
    assert sorted(set(fleet(runner.produced))) == expected


def test_sketch_state_within_its_formula() -> None:
    """The state-size bound benchmarks/fleet_state.py states, on a small fleet: 4 segments x
    5 clusters, two windows open; Python's allocations for the state (tracemalloc) and what the
    state reports of itself both stay under it."""
    cfg = DriftConfig(mode="sketch", features=FEATURES, segment_keys=["service", "cluster"],
                      peer=PeerDriftConfig(enabled=True, window_s=100, lateness_s=50,
                                           max_metric_series=0))
    records = [LLMCall(service=f"s{segment}", model="m", cluster=f"c{cluster}", trace_id="t",
                       span_id="s", latency_ms=10 + 990 * ((t * 7919) % 150) / 150,
                       start_time_unix_nano=t * 10**9)  # 10..1000 ms: two decades
               for segment in range(4) for cluster in range(5) for t in range(150)]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    peer = PeerDrift(cfg, FEATURES, {"llm": ["service", "cluster"]})
    for rec in records:  # 100 s in the first window, 50 s in the second
        peer.observe("llm", rec, [{"latency_ms": rec.latency_ms}], rec.start_time_unix_nano, 0,
                     closed_at=0)
    gc.collect()
    allocated = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(before, "filename"))
    tracemalloc.stop()
    assert sum(len(s.windows) for s in peer.segments.values()) == 4 * 2
    bound = sketch_budget_bytes(segments=4, clusters=5, numeric=1, categorical=0,
                                decades=2, relative_accuracy=cfg.sketch_relative_accuracy)
    assert allocated <= bound and peer.state_bytes() <= bound
    assert peer.state_bytes() >= 0.5 * allocated  # what it reports is near what it holds


def test_a_policy_acts_on_peer_drift_and_names_the_cluster() -> None:
    results = run_in_process(config(["service", "model", "cluster"], peer=True),
                             traffic({"ap-1"}))
    fleet_policy = PolicyTracker(PolicyConfig(
        name="peer", comparison="fleet", signal="dataset_drift", threshold=1,
        consecutive_windows=2, min_samples=N, record_types=["llm"], approval=True))
    past_policy = PolicyTracker(PolicyConfig(
        name="own", signal="dataset_drift", threshold=1, consecutive_windows=2,
        min_samples=N, record_types=["llm"]))
    fleet_decisions = [d for r in results if (d := fleet_policy.update(r, now=0)) is not None]
    past_decisions = [d for r in results if (d := past_policy.update(r, now=0)) is not None]
    (decision,) = fleet_decisions
    assert decision.segment_key == "shop|m1|ap-1" and decision.kind == "fired"
    assert decision.reason.startswith("cluster ap-1 against its fleet (eu-1, us-1): ")
    # The default policy (comparison past) never reads peer results: one decision, its own.
    (own,) = past_decisions
    assert own.segment_key == "shop|m1|ap-1" and "fleet" not in own.reason


# What the GPU collector exports per cluster (collectors.gpu.metrics, with the cluster label).
ECONOMICS = "".join(
    f'observer_gpu_economics_{name}{{scope="gpu",name="GPU-{c}",cluster="{c}"}} {value}\n'
    for c in CLUSTERS for name, value in (("tokens_per_second", 1200),
                                          ("cost_dollars_per_second", 0.001))
)


def test_every_fleet_panel_query_returns_data(start_prometheus, exposition_server) -> None:
    """The fleet dashboard against a real Prometheus scraping the engine's own metrics (after
    the drifting-cluster traffic) and per-cluster economics series, with honor_labels as the
    central stages are scraped: every panel query returns data, and the heat map's cells
    say which cluster drifted."""
    run_in_process(config(["service", "model", "cluster"], peer=True), traffic({"ap-1"}))
    peer = PeerDrift(config(["service", "model", "cluster"], peer=True), FEATURES,
                     {"llm": ["service", "model", "cluster"]})
    nameless = LLMCall(service="shop", model="m1", trace_id="t", span_id="s", latency_ms=1.0)
    peer.observe("llm", nameless, [{"latency_ms": 1.0}], T0_S * 10**9, 0, closed_at=0)
    engine = exposition_server(lambda: generate_latest(REGISTRY).decode())
    economics = exposition_server(lambda: ECONOMICS)
    prom = start_prometheus(jobs=[{
        "job_name": "central", "honor_labels": True,
        "static_configs": [{"targets": [engine.address, economics.address]}],
    }])
    prom.wait_for_scrapes(3)
    client = PrometheusConnect(url=prom.url, disable_ssl=True)
    queries = dashboard_queries("observer-fleet")
    assert len(queries) >= 7
    missing = queries_without_data(client, queries)
    assert not missing, describe(missing)
    cells = client.custom_query('max by (cluster, segment) (observer_peer_dataset_drift)')
    drifting = {(c["metric"]["cluster"], c["metric"]["segment"]) for c in cells
                if float(c["value"][1]) == 1}
    # (other tests of this module leave series of their own clusters in the registry)
    assert {d for d in drifting if d[0] in CLUSTERS} == {("ap-1", "shop|m1")}
    per_dollar = client.custom_query(expand(queries[-1][2]))
    assert {r["metric"]["cluster"] for r in per_dollar} == set(CLUSTERS)
    assert float(per_dollar[0]["value"][1]) == pytest.approx(1200 / 3.6)


def test_knobs_from_yaml_and_environment(tmp_path) -> None:
    from observer.config import load_config

    path = tmp_path / "observer.yaml"
    path.write_text("drift:\n  peer:\n    enabled: true\n    min_clusters: 4\n")
    cfg = load_config(path, {"OBSERVER_DRIFT__PEER__WINDOW_S": "120",
                             "OBSERVER_DRIFT__PEER__LATENESS_S": "30"})
    assert (cfg.drift.peer.enabled, cfg.drift.peer.min_clusters, cfg.drift.peer.window_s,
            cfg.drift.peer.lateness_s) == (True, 4, 120.0, 30.0)


def test_a_peer_key_no_record_has_stops_the_engine() -> None:
    cfg = config(["service", "model"], peer=True)
    cfg = cfg.model_copy(update={"peer": cfg.peer.model_copy(update={"key": "clustr"})})
    with pytest.raises(ValueError, match="drift.peer.key 'clustr' is not a field"):
        DriftEngine(cfg, Topics.from_config(KafkaConfig()))


def test_retiring_the_last_stream_of_a_fleet_segment_retires_its_peer_state() -> None:
    """Peer state stays within what the streams bound when idle streams are retired
    (drift.retirement): a fleet segment and its checkpoint records go with the last stream
    that feeds it, not before."""
    cfg = config(["service", "model", "cluster"], True, checkpoints=True, max_streams=3,
                 stream_idle_s=3600)
    runner = Runner(cfg)
    now = [T0_S * 10**9]
    offsets = [0]
    engine = DriftEngine(cfg, TOPICS, store=runner.store, results=runner.log,
                         clock=lambda: now[0])

    def send(service: str, clusters: tuple[str, ...], at_s: int) -> None:
        now[0] = (T0_S + at_s) * 10**9
        batch = []
        for i in range(10):
            for cluster in clusters:
                record = LLMCall(service=service, model="m1", cluster=cluster, span_id="s",
                                 trace_id=f"{service}-{cluster}-{at_s}-{i}", latency_ms=100.0 + i,
                                 start_time_unix_nano=(T0_S + at_s + i) * 10**9)
                batch.append(Message(TOPICS.llm, 0, offsets[0], f"{service}|m1".encode(),
                                     encode(record), (T0_S + at_s + 900) * 1000))
                offsets[0] += 1
        runner.acknowledge(engine.process(batch) + engine.tick())

    def peer_keys(fleet: str) -> set[str]:
        return {k for k, v in runner.store.load().items() if v is not None and k in (
            peer_key("llm", fleet, "eu-1"), peer_key("llm", fleet, "us-1"))}

    send("shop", ("eu-1", "us-1"), 0)  # two streams feeding the fleet segment shop|m1
    send("bank", ("eu-1",), 100)
    assert ("shop|m1", "llm") in engine._peer.segments and len(peer_keys("shop|m1")) == 2
    send("web", ("eu-1",), 5000)  # shop|m1|eu-1 retired: shop|m1|us-1 still feeds the fleet
    assert ("shop|m1|eu-1", "llm") not in engine._streams
    assert ("shop|m1", "llm") in engine._peer.segments and len(peer_keys("shop|m1")) == 2
    send("web", ("us-1",), 5001)  # the fleet's last stream retired: its peer state goes
    assert ("shop|m1|us-1", "llm") not in engine._streams
    assert ("shop|m1", "llm") not in engine._peer.segments
    send("web", ("us-1",), 5002)  # the next iteration: the deletions are confirmed
    assert peer_keys("shop|m1") == set() and len(peer_keys("bank|m1")) == 1
