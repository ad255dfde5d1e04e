"""Evidently HTML drift reports: rendered from the windows' records on Kafka, served by the
admin API, written by ``observer drift score --report-dir``, and opened in headless Chromium
with the network blocked."""

from __future__ import annotations

import functools
import http.server
import math
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from observer.drift.reports import (
    DriftReports,
    ReportColumn,
    ReportError,
    ReportNotFound,
    render_report,
    report_id,
    window_frame,
)
from observer.drift.scoring import score_columns
from observer.admin import create_admin_app
from observer.drift.admin_routes import drift_router
from observer.core.broker import EmbeddedBroker
from observer.core.bus import ensure_topics, make_producer
from observer.core.config import AdminConfig, KafkaConfig
from observer.drift.config import DriftConfig, DriftReportsConfig, FeatureSpec
from observer.core.http import ServerThread
from observer.core.records import DriftResult, LLMCall, OffsetRange, encode
from observer.core.topics import Topics
from observer.views import TopicView
from tests import browser
from tests.drift_support import drain_results, engine_running, first_window_config
from tests.drift_support import score_files as run_score

WINDOW = 300
FEATURES = [
    FeatureSpec(name="output_tokens", kind="numeric"),
    FeatureSpec(name="latency_ms", kind="numeric"),
    FeatureSpec(name="finish_reason", kind="categorical"),
]


def calls(rng: np.random.Generator, n: int, service: str, scale: float = 1.0,
          finish_p: tuple[float, float] = (0.9, 0.1)) -> list[LLMCall]:
    out = (rng.lognormal(np.log(200), 0.5, n) * scale).astype(int)
    reasons = rng.choice(["stop", "length"], n, p=finish_p)
    return [
        LLMCall(service=service, model="m1", trace_id=uuid.uuid4().hex, span_id="s",
                output_tokens=int(out[i]), latency_ms=float(300 + 20 * out[i] + rng.normal(0, 40)),
                finish_reason=str(reasons[i]))
        for i in range(n)
    ]


# --- rendering, no Kafka ------------------------------------------------------------------


def test_report_shows_the_engines_statistics_and_is_self_contained() -> None:
    rng = np.random.default_rng(3)
    ref, cur = calls(rng, 800, "s"), calls(rng, 600, "s", scale=1.4, finish_p=(0.6, 0.4))
    columns = {f.name: [getattr(r, f.name) for r in ref] for f in FEATURES}
    current = {f.name: [getattr(r, f.name) for r in cur] for f in FEATURES}
    for numeric, categorical in (("psi", "jensenshannon"), ("wasserstein", "psi")):
        features = score_columns(columns, current, FEATURES, numeric_method=numeric,
                                 categorical_method=categorical)
        report_columns = [ReportColumn.of(f) for f in features]
        rendered = render_report(window_frame(ref, report_columns),
                                 window_frame(cur, report_columns), report_columns,
                                 title="t <x>", details={"segment": "s&t"})
        assert set(rendered.statistics) == {f.name for f in features}
        for f in features:
            assert rendered.statistics[f.name] == pytest.approx(f.statistic, rel=1e-6), f.name
        assert rendered.drift_share == pytest.approx(sum(f.drifted for f in features) / 3)
    page = rendered.html
    # Everything the page needs is inside it: no script, style or font fetched from elsewhere.
    assert "<script src" not in page and "<link" not in page and "url(http" not in page
    assert "<title>t &lt;x&gt;</title>" in page and "s&amp;t" in page


def test_features_without_values_are_left_out() -> None:
    ref = pd.DataFrame({"a": [1.0, 2.0, 3.0] * 20, "b": [np.nan] * 60})
    cur = pd.DataFrame({"a": [5.0, 6.0, 7.0] * 20, "b": [1.0] * 60})
    cols = [ReportColumn("a", "numeric", "wasserstein", 0.1), ReportColumn("b", "numeric", "psi", 0.1)]
    assert set(render_report(ref, cur, cols).statistics) == {"a"}
    with pytest.raises(ReportError, match="no feature has values on both sides"):
        render_report(ref, cur, cols[1:])


@pytest.mark.parametrize(
    "column, message",
    [
        (ReportColumn("a", "numeric", "energy", 0.1), "method 'energy' has no Evidently equivalent"),
        (ReportColumn("nope", "numeric", "psi", 0.1), "the reference window has no column 'nope'"),
    ],
)
def test_bad_columns_are_named(column: ReportColumn, message: str) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0]})
    with pytest.raises(ReportError, match=message):
        render_report(frame, frame, [column])


def test_report_ids_are_stable_and_distinct() -> None:
    def result(window: int, last: int) -> DriftResult:
        return DriftResult(
            segment={"service": "s"}, segment_key="s", record_type="llm", window_index=window,
            n_reference=1, n_current=1, features=[], drift_share=1, dataset_drift=True,
            closed_at_unix_nano=0,
            current_ranges=[OffsetRange(topic="t", partition=0, first_offset=0, last_offset=last)],
        )

    assert report_id(result(2, 9)) == report_id(result(2, 9))
    assert len({report_id(result(2, 9)), report_id(result(3, 9)), report_id(result(2, 8))}) == 3


# --- served by the admin API, from the records on Kafka ----------------------------------


def _produce_interleaved(kafka: KafkaConfig, topic: str) -> None:
    """Two segments on one partition, interleaved: each window's offset range holds the other
    segment's records too, which a report must leave out."""
    rng = np.random.default_rng(11)
    shop = calls(rng, 2 * WINDOW, "shop") + calls(rng, WINDOW, "shop", scale=1.5, finish_p=(0.5, 0.5))
    # The other segment is very different: mixing it in would change every statistic.
    bank = calls(rng, 2 * WINDOW, "bank", scale=4.0, finish_p=(0.1, 0.9))
    producer = make_producer(kafka)
    for i, record in enumerate(shop):
        producer.send(topic, key=b"shop|m1", value=encode(record), partition=0)
        if i < len(bank):
            producer.send(topic, key=b"bank|m1", value=encode(bank[i]), partition=0)
    producer.flush(30)
    producer.close()


@pytest.fixture(scope="module")
def kafka(broker: EmbeddedBroker) -> KafkaConfig:
    """Topics of this module on the shared broker (one engine run serves every test)."""
    return _fresh_kafka(broker)


def _fresh_kafka(broker: EmbeddedBroker) -> KafkaConfig:
    """Topics of their own on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"r{tag}.",
                      otlp_topic_prefix=f"r{tag}.", partitions=2, session_timeout_ms=6000,
                      heartbeat_interval_ms=1000)
    ensure_topics(cfg, Topics.from_config(cfg))
    return cfg


@pytest.fixture(scope="module")
def drifted(kafka: KafkaConfig) -> list[DriftResult]:
    """The real engine, on the real broker, scoring two segments; its results."""
    topics = Topics.from_config(kafka)
    # drift_share 1.0: only a window where every feature drifted counts (calm windows of 300
    # records can cross one threshold by chance).
    cfg = first_window_config(window_size=WINDOW, features={"llm": FEATURES}, drift_share=1.0)
    with engine_running(kafka, cfg, topics):
        _produce_interleaved(kafka, topics.llm)
        return drain_results(kafka, topics.drift, 3)


@pytest.fixture(scope="module")
def admin(kafka: KafkaConfig, drifted: list[DriftResult],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, DriftReports, TopicView]]:
    with admin_over(kafka, len(drifted), tmp_path_factory.mktemp("reports")) as served:
        yield served


@contextmanager
def admin_over(kafka: KafkaConfig, results: int, report_dir: Path
               ) -> Iterator[tuple[str, DriftReports, TopicView]]:
    """The admin app over ``observer.drift`` once its view holds ``results`` results."""
    view = TopicView(kafka, Topics.from_config(kafka).drift,
                     lambda r: f"{r.segment_key}/{r.record_type}" if isinstance(r, DriftResult) else "")
    view.start()
    try:
        deadline = time.monotonic() + 30
        while view.count < results and time.monotonic() < deadline:
            time.sleep(0.05)
        reports = DriftReports(DriftReportsConfig(dir=report_dir), kafka, drift_share=1.0)
        app = create_admin_app(AdminConfig(), kafka_ready=lambda: True, stage_errors=dict,
                               routers=[drift_router(view, reports)])
        with ServerThread(app) as server:
            yield server.url, reports, view
    finally:
        view.stop()


def test_admin_lists_and_serves_the_report_of_a_drifted_window(
    admin: tuple[str, DriftReports, TopicView], drifted: list[DriftResult]
) -> None:
    url, reports, _ = admin
    by_window = {(r.segment_key, r.window_index): r for r in drifted}
    assert sorted(by_window) == [("bank|m1", 1), ("shop|m1", 1), ("shop|m1", 2)]
    shop2 = by_window[("shop|m1", 2)]
    assert shop2.dataset_drift and not by_window[("bank|m1", 1)].dataset_drift

    listed = httpx.get(f"{url}/api/v1/drift").json()["results"]
    links = {r["segment_key"]: r.get("report") for r in listed}
    assert links == {"bank|m1": None, "shop|m1": f"/reports/{report_id(shop2)}"}
    assert [r["id"] for r in httpx.get(f"{url}/api/v1/reports").json()["reports"]] == [
        report_id(shop2)]

    # The report compares exactly the segment's records: the engine's numbers, again.
    rendered = reports.render(shop2)
    for f in shop2.features:
        assert rendered.statistics[f.name] == pytest.approx(f.statistic, rel=1e-6), f.name

    first = httpx.get(f"{url}{links['shop|m1']}", timeout=120)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in first.headers["content-security-policy"]
    cached = reports.cached(report_id(shop2))
    assert cached is not None and cached.read_bytes() == first.content
    mtime = cached.stat().st_mtime_ns
    assert httpx.get(f"{url}{links['shop|m1']}").content == first.content
    assert cached.stat().st_mtime_ns == mtime  # served from the cache, not rendered again


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/reports/llm-w1-0123456789abcdef", 404, "no drifted window"),
        ("/reports/..passwd", 404, "not a report id"),
        ("/reports/..%2F..%2Fetc%2Fpasswd", 404, "Not Found"),  # no route has a slash there
    ],
)
def test_unknown_report_ids_are_404(admin: tuple[str, DriftReports, TopicView], path: str,
                                    status: int, message: str) -> None:
    url, _, _ = admin
    response = httpx.get(f"{url}{path}")
    assert response.status_code == status and message in response.json()["detail"]


def test_a_window_without_drift_has_no_report(
    admin: tuple[str, DriftReports, TopicView], drifted: list[DriftResult]
) -> None:
    url, _, _ = admin
    calm = next(r for r in drifted if not r.dataset_drift)
    assert httpx.get(f"{url}/reports/{report_id(calm)}").status_code == 404


def test_reports_need_the_admin_token(
    admin: tuple[str, DriftReports, TopicView], drifted: list[DriftResult]
) -> None:
    _, reports, view = admin
    app = create_admin_app(AdminConfig(auth_token="s3cret"), kafka_ready=lambda: True,
                           stage_errors=dict, routers=[drift_router(view, reports)])
    rid = report_id(next(r for r in drifted if r.dataset_drift))
    with ServerThread(app) as server:
        assert httpx.get(f"{server.url}/reports/{rid}").status_code == 401
        assert httpx.get(f"{server.url}/api/v1/reports").status_code == 401
        ok = httpx.get(f"{server.url}/reports/{rid}", timeout=120,
                       headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and b"observer-report-header" in ok.content


def test_an_unreadable_window_names_the_reason(
    kafka_config: KafkaConfig, topics: Topics, tmp_path: Path
) -> None:
    gone = DriftResult(
        segment={"service": "x"}, segment_key="x", record_type="llm", window_index=1,
        n_reference=10, n_current=10, features=[], drift_share=1, dataset_drift=True,
        closed_at_unix_nano=0,
        reference_ranges=[OffsetRange(topic=topics.llm, partition=1, first_offset=0, last_offset=9)],
        current_ranges=[OffsetRange(topic=topics.llm, partition=1, first_offset=10, last_offset=19)],
    )
    reports = DriftReports(DriftReportsConfig(dir=tmp_path, read_timeout_s=3), kafka_config)
    with pytest.raises(ReportError, match="reading the current window back: timed out"):
        reports.get(gone)


def test_old_reports_are_pruned(tmp_path: Path) -> None:
    reports = DriftReports(DriftReportsConfig(dir=tmp_path, keep=2), None)
    for i in range(4):
        (tmp_path / f"llm-w{i}-{i:016x}.html").write_text("x")
        time.sleep(0.01)
    reports._prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"llm-w{i}-{i:016x}.html" for i in (2, 3)]


# --- one report per drift episode ------------------------------------------------------------


def test_report_ids_follow_the_episode() -> None:
    def result(window: int, episode: int | None) -> DriftResult:
        return DriftResult(
            segment={"service": "s"}, segment_key="s", record_type="llm", window_index=window,
            n_reference=1, n_current=1, features=[], drift_share=1, dataset_drift=True,
            closed_at_unix_nano=0, episode_start_window=episode,
            current_ranges=[OffsetRange(topic="t", partition=0, first_offset=window,
                                        last_offset=window)],
        )

    assert report_id(result(3, 3)) == report_id(result(4, 3)) == report_id(result(9, 3))
    assert report_id(result(3, 3)).startswith("llm-w3-")
    assert len({report_id(result(3, 3)), report_id(result(5, 5)), report_id(result(3, None))}) == 3


def test_a_later_window_never_renders_its_episodes_report(tmp_path: Path) -> None:
    later = DriftResult(
        segment={"service": "x"}, segment_key="x", record_type="llm", window_index=5,
        n_reference=10, n_current=10, features=[], drift_share=1, dataset_drift=True,
        closed_at_unix_nano=0, episode_start_window=4,
        current_ranges=[OffsetRange(topic="t", partition=0, first_offset=50, last_offset=59)],
    )
    reports = DriftReports(DriftReportsConfig(dir=tmp_path), None)
    with pytest.raises(ReportNotFound, match=r"first window of its drift episode \(window 4\)"):
        reports.get(later)
    # Once the episode's report is on disk, any window of the episode is served from it.
    (tmp_path / f"{report_id(later)}.html").write_text("rendered")
    assert reports.get(later).read_text() == "rendered"


EPISODES = "dddcdd"  # after the reference window: drifted x3, calm, drifted x2


@pytest.fixture(scope="module")
def episode_admin(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[str, DriftReports, list[DriftResult]]]:
    """The real engine on the real broker, one segment drifting in two episodes; the admin
    app over its results."""
    kafka = _fresh_kafka(broker)
    topics = Topics.from_config(kafka)
    rng = np.random.default_rng(12)
    reference = calls(rng, WINDOW, "ep")
    windows = [reference]
    for kind in EPISODES:
        # Calm: the reference's own calls reordered, so no feature can drift by chance.
        windows.append([reference[i] for i in rng.permutation(WINDOW)] if kind == "c" else
                       calls(rng, WINDOW, "ep", scale=1.5, finish_p=(0.5, 0.5)))
    producer = make_producer(kafka)
    for record in (r for w in windows for r in w):
        producer.send(topics.llm, key=b"ep|m1", value=encode(record), partition=0)
    producer.flush(30)
    producer.close()
    cfg = first_window_config(window_size=WINDOW, features={"llm": FEATURES}, drift_share=1.0)
    with engine_running(kafka, cfg, topics):
        got = drain_results(kafka, topics.drift, len(EPISODES))
    with admin_over(kafka, len(got), tmp_path_factory.mktemp("episodes")) as (url, reports, _):
        yield url, reports, got


def test_consecutive_drifted_windows_share_one_report_and_a_new_episode_gets_another(
    episode_admin: tuple[str, DriftReports, list[DriftResult]],
) -> None:
    url, reports, got = episode_admin
    by_window = {r.window_index: r for r in got}
    assert [(w, by_window[w].dataset_drift, by_window[w].episode_start_window)
            for w in sorted(by_window)] == [
        (1, True, 1), (2, True, 1), (3, True, 1), (4, False, None), (5, True, 5), (6, True, 5)]
    first, second = report_id(by_window[1]), report_id(by_window[5])
    assert first != second
    assert {report_id(by_window[w]) for w in (1, 2, 3)} == {first}
    assert {report_id(by_window[w]) for w in (5, 6)} == {second}

    listed = httpx.get(f"{url}/api/v1/reports").json()["reports"]
    assert [(e["id"], e["episode_start_window"], e["windows"]) for e in listed] == [
        (second, 5, [5, 6]), (first, 1, [1, 2, 3])]
    [latest] = httpx.get(f"{url}/api/v1/drift").json()["results"]
    assert latest["window_index"] == 6 and latest["report"] == f"/reports/{second}"

    # Every drifted window's link: two reports rendered, one per episode.
    for w in (1, 2, 3, 5, 6):
        page = httpx.get(f"{url}/reports/{report_id(by_window[w])}", timeout=120)
        assert page.status_code == 200, page.text
    assert sorted(p.name for p in reports.dir.glob("*.html")) == sorted(
        [f"{first}.html", f"{second}.html"])
    # The second episode's report is the reference against window 5, where it began.
    page = reports.cached(second).read_text()
    assert "<th style='text-align:left;padding-right:1em'>window</th><td>5</td>" in page
    assert "began at window 5" in page
    rendered = reports.render(by_window[5])
    for f in by_window[5].features:
        assert rendered.statistics[f.name] == pytest.approx(f.statistic, rel=1e-6), f.name


# --- in a browser, without network -----------------------------------------------------------


def _drift_rows(dom: str, names: list[str]) -> dict[str, list[str]]:
    """Rows of Evidently's drift table, by column name: [name, type, ..., verdict, test, score]."""
    return {row[1]: row[1:] for row in browser.cells(dom) if len(row) > 7 and row[1] in names}


def test_chromium_renders_the_served_report_without_network(
    admin: tuple[str, DriftReports, TopicView], drifted: list[DriftResult]
) -> None:
    url, _, _ = admin
    shop2 = next(r for r in drifted if r.dataset_drift)
    page = f"{url}/reports/{report_id(shop2)}"
    assert httpx.get(page, timeout=120).status_code == 200  # rendered before the browser comes

    loaded = browser.load(page)

    assert loaded.foreign_requests(page) == []
    assert page in loaded.page_requests
    assert "Data Drift Summary" in loaded.dom
    rows = _drift_rows(loaded.dom, [f.name for f in shop2.features])
    assert set(rows) == {f.name for f in shop2.features}
    for f in shop2.features:
        row = rows[f.name]
        assert row[-3] == ("Detected" if f.drifted else "Not Detected"), row
        assert float(row[-1]) == pytest.approx(f.statistic, abs=1e-6), row
    assert "<svg" in loaded.dom  # the distribution plots were drawn, by the embedded Plotly


@pytest.fixture
def static_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def score_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = np.random.default_rng(8)
    d = tmp_path_factory.mktemp("reports")
    n = 600
    ref = pd.DataFrame({"svc": ["a"] * n + ["b/c"] * n, "tokens": rng.lognormal(5, 0.5, 2 * n),
                        "reason": rng.choice(["stop", "length"], 2 * n, p=[0.8, 0.2])})
    cur = ref.sample(frac=1, random_state=1).reset_index(drop=True)
    late = (cur["svc"] == "a") & (cur.groupby("svc").cumcount() >= n // 2)
    cur.loc[late, "tokens"] *= 1.8  # segment a drifts in its second window
    cur.loc[late, "reason"] = "length"
    paths = {"ref": d / "ref.parquet", "cur": d / "cur.csv"}
    ref.to_parquet(paths["ref"])
    cur.to_csv(paths["cur"], index=False)
    return paths


def test_offline_reports_render_without_network_and_a_cdn_reference_is_caught(
    score_files: dict[str, Path], tmp_path: Path, static_server: tuple[str, Path]
) -> None:
    report_dir = tmp_path / "out"
    # PSI, and dataset drift only when both features drifted: calm windows stay calm.
    code, results, err = run_score(score_files, window_size=300, segment_by=["svc"], method="psi",
                                drift_share=1.0, report_dir=str(report_dir))
    assert code == 0, err
    drifted = [r for r in results if r["drift"]]
    assert [(r["segment"]["svc"], r["window"]["index"]) for r in drifted] == [("a", 2)]
    assert all("report" not in r for r in results if not r["drift"])
    written = Path(drifted[0]["report"])
    assert written.parent == report_dir and written.name == "a-window-2.html"
    assert [p.name for p in report_dir.iterdir()] == ["a-window-2.html"]

    base, root = static_server
    (root / "ok.html").write_bytes(written.read_bytes())
    # The control: the same page made to load a script from a CDN, as a report must not.
    tampered = written.read_text().replace(
        "<head>", '<head><script src="https://cdn.jsdelivr.net/npm/plotly.js"></script>', 1)
    (root / "cdn.html").write_text(tampered)

    ok = browser.load(f"{base}/ok.html")
    assert ok.foreign_requests(f"{base}/ok.html") == []
    rows = _drift_rows(ok.dom, ["tokens", "reason"])
    for name, feature in drifted[0]["features"].items():
        assert rows[name][-3] == ("Detected" if feature["drift"] else "Not Detected")
        assert math.isclose(float(rows[name][-1]), feature["statistic"], abs_tol=1e-6)

    bad = browser.load(f"{base}/cdn.html")
    assert bad.foreign_requests(f"{base}/cdn.html") == ["https://cdn.jsdelivr.net/npm/plotly.js"]


def test_offline_reports_one_per_drift_episode(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    ref = pd.DataFrame({"tokens": rng.lognormal(5, 0.5, 900),
                        "reason": rng.choice(["stop", "length"], 900, p=[0.8, 0.2])})
    windows = []
    for kind in "cddcd":  # calm, drifted x2, calm, drifted
        rows = ref.sample(300, random_state=int(rng.integers(1 << 30))).reset_index(drop=True)
        if kind == "d":
            rows = rows.assign(tokens=rows["tokens"] * 1.8, reason="length")
        windows.append(rows)
    files = {"ref": tmp_path / "ref.parquet", "cur": tmp_path / "cur.parquet"}
    ref.to_parquet(files["ref"])
    pd.concat(windows, ignore_index=True).to_parquet(files["cur"])
    report_dir = tmp_path / "out"
    code, results, err = run_score(files, window_size=300, method="psi", drift_share=1.0,
                                   report_dir=str(report_dir))
    assert code == 0, err
    assert [(r["window"]["index"], r["drift"], r.get("report")) for r in results] == [
        (1, False, None),
        (2, True, str(report_dir / "all-window-2.html")),
        (3, True, str(report_dir / "all-window-2.html")),
        (4, False, None),
        (5, True, str(report_dir / "all-window-5.html")),
    ]
    assert sorted(p.name for p in report_dir.iterdir()) == ["all-window-2.html", "all-window-5.html"]


def test_offline_report_dir_that_is_a_file_is_one_clear_error(
    score_files: dict[str, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a directory")
    code, _, err = run_score(score_files, window_size=300, segment_by=["svc"], method="psi",
                          drift_share=1.0, report_dir=str(blocker))
    assert code == 2
    assert err.startswith("observer drift score: report of window 2: cannot create the report "
                          f"directory {blocker}") and err.count("\n") == 1


# --- references and windows other than the first count window -------------------------------


def _produce(kafka: KafkaConfig, topic: str, records: list[LLMCall]) -> OffsetRange:
    producer = make_producer(kafka)
    sent = [producer.send(topic, key=b"k", value=encode(r), partition=0) for r in records]
    producer.flush(30)
    offsets = [f.get(30).offset for f in sent]
    producer.close()
    return OffsetRange(topic=topic, partition=0, first_offset=min(offsets), last_offset=max(offsets))


def _result(features: list[Any], current: OffsetRange, reference: list[OffsetRange],
            **extra: Any) -> DriftResult:
    return DriftResult(segment={"service": "shop", "model": "m1"}, segment_key="shop|m1",
                       record_type="llm", window_index=1, n_reference=0, n_current=0,
                       features=features, drift_share=1.0, dataset_drift=True,
                       closed_at_unix_nano=0, reference_ranges=reference,
                       current_ranges=[current], **extra)


def _columns(records: list[LLMCall]) -> dict[str, list[Any]]:
    return {f.name: [getattr(r, f.name) for r in records] for f in FEATURES}


def test_a_parquet_reference_is_read_from_the_dataset(
    kafka_config: KafkaConfig, topics: Topics, tmp_path: Path
) -> None:
    rng = np.random.default_rng(21)
    ref_shop, ref_bank = calls(rng, 800, "shop"), calls(rng, 800, "bank", scale=5.0)
    dataset = pd.DataFrame([{"service": r.service, "model": r.model, **{
        f.name: getattr(r, f.name) for f in FEATURES}} for r in ref_shop + ref_bank])
    dataset.to_parquet(tmp_path / "ref.parquet")
    current = calls(rng, WINDOW, "shop", scale=1.5, finish_p=(0.5, 0.5))
    where = _produce(kafka_config, topics.llm, current)
    features = score_columns(_columns(ref_shop), _columns(current), FEATURES,
                             numeric_method="psi")
    drift = DriftConfig(reference="parquet", reference_path=str(tmp_path / "ref.parquet"),
                        features={"llm": FEATURES})
    reports = DriftReports.from_config(drift.model_copy(update={"reports": DriftReportsConfig(
        dir=tmp_path / "reports")}), kafka_config)

    rendered = reports.render(_result(features, where, []))

    for f in features:  # the shop rows only: the bank rows would change every number
        assert rendered.statistics[f.name] == pytest.approx(f.statistic, rel=1e-6), f.name
    without = DriftReports(DriftReportsConfig(dir=tmp_path), kafka_config)
    with pytest.raises(ReportError, match="names no offsets of its reference window"):
        without.render(_result(features, where, []))


def test_a_time_window_leaves_out_records_of_other_times(
    kafka_config: KafkaConfig, topics: Topics, tmp_path: Path
) -> None:
    rng = np.random.default_rng(22)
    start, end = 1_800_000_000 * 10**9, 1_800_000_600 * 10**9
    reference = calls(rng, 600, "shop")
    inside = [r.model_copy(update={"start_time_unix_nano": start + i * 10**9})
              for i, r in enumerate(calls(rng, WINDOW, "shop", scale=1.5, finish_p=(0.5, 0.5)))]
    after = [r.model_copy(update={"start_time_unix_nano": end + i})
             for i, r in enumerate(calls(rng, 100, "shop", scale=6.0, finish_p=(0.1, 0.9)))]
    ref_range = _produce(kafka_config, topics.llm, reference)
    mixed = [x for pair in zip(inside[:100], after) for x in pair] + inside[100:]
    cur_range = _produce(kafka_config, topics.llm, mixed)
    features = score_columns(_columns(reference), _columns(inside), FEATURES, numeric_method="psi")
    reports = DriftReports(DriftReportsConfig(dir=tmp_path), kafka_config)

    rendered = reports.render(_result(features, cur_range, [ref_range],
                                      window_start_unix_nano=start, window_end_unix_nano=end))

    for f in features:
        assert rendered.statistics[f.name] == pytest.approx(f.statistic, rel=1e-6), f.name
