"""``observer references`` and ``/api/v1/references`` on the real broker, against the drift
stage run by the runtime: reads from ``observer.references``, writes as commands on
``observer.drift-commands`` that the engine applies."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import httpx
import numpy as np
import pytest
import yaml

from observer.cli import main
from observer.config import ObserverConfig
from observer.core.bus import Output, make_producer, produce_all
from observer.core.config import AdminConfig, KafkaConfig
from observer.core.records import LLMCall, encode
from observer.core.topics import Topics
from observer.drift.config import DriftConfig, FeatureSpec
from observer.runtime import Runtime

TOKEN = "refs-t0ken"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SEGMENT = "shop|m1"


def produce_calls(kafka: KafkaConfig, topics: Topics, n: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    producer = make_producer(kafka)
    try:
        produce_all(producer, [Output(topics.llm, SEGMENT, encode(LLMCall(
            service="shop", model="m1", trace_id=uuid.uuid4().hex, span_id="s",
            output_tokens=int(rng.lognormal(np.log(200 * scale), 0.3))))) for _ in range(n)], 10)
    finally:
        producer.close()


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


@pytest.mark.e2e
def test_references_over_the_admin_api_and_the_cli(
    kafka_config: KafkaConfig, topics: Topics, free_port: Any, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    drift = DriftConfig(window_size=20, reference="first_window", numeric_method="ks",
                        features={"llm": [FeatureSpec(name="output_tokens", kind="numeric")]})
    cfg = ObserverConfig(kafka=kafka_config, drift=drift,
                         admin=AdminConfig(port=free_port(), auth_token=TOKEN))
    config_file = tmp_path / "observer.yaml"
    config_file.write_text(yaml.safe_dump({"kafka": kafka_config.model_dump(mode="json")}))
    runtime = Runtime(cfg, ["drift"]).start()
    admin = httpx.Client(base_url=runtime.endpoints()["admin"], timeout=10)

    def state() -> dict[str, Any] | None:
        r = admin.get("/api/v1/references", headers=AUTH,
                      params={"record_type": "llm", "segment": SEGMENT})
        return r.json()["references"][0] if r.status_code == 200 else None

    def post(verb: str, token: bool = True, **body: Any) -> httpx.Response:
        return admin.post(f"/api/v1/references/{verb}", headers=AUTH if token else {},
                          json={"record_type": "llm", "segment": SEGMENT, **body})

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["--config", str(config_file), "references", *args])
        out = capsys.readouterr()
        return code, out.out, out.err

    try:
        produce_calls(kafka_config, topics, 30, 1.0, seed=1)
        v1 = wait_for(lambda: (s := state()) and s["current"] == 1 and s, "reference v1")
        assert [(v["version"], v["source"], v["n"]) for v in v1["versions"]] == [
            (1, "first_window", 20)]
        # The token guards reads and writes alike.
        assert admin.get("/api/v1/references").status_code == 401
        assert post("pin", token=False).status_code == 401
        listed = admin.get("/api/v1/references", headers=AUTH).json()["references"]
        assert [(s["segment_key"], s["current"]) for s in listed] == [(SEGMENT, 1)]
        # Bad segments and arguments, named.
        missing = admin.post("/api/v1/references/pin", headers=AUTH,
                             json={"record_type": "llm", "segment": "nope|m9"})
        assert missing.status_code == 404 and "'nope|m9'" in missing.json()["detail"]
        unknown = admin.get("/api/v1/references", headers=AUTH,
                            params={"record_type": "tools", "segment": SEGMENT})
        assert unknown.status_code == 404 and "record type 'tools'" in unknown.json()["detail"]
        two = post("rebaseline", next=5, parquet="x")
        assert two.status_code == 400 and "exactly one of" in two.json()["detail"]
        none = post("rebaseline")
        assert none.status_code == 400 and "got none" in none.json()["detail"]
        negative = post("rebaseline", next=0)
        assert negative.status_code == 422 and "next" in json.dumps(negative.json()["detail"])
        nameless = admin.post("/api/v1/references/pin", headers=AUTH, json={"record_type": "llm"})
        assert nameless.status_code == 422 and "segment" in json.dumps(nameless.json()["detail"])
        window = post("rebaseline", from_window=99)
        assert window.status_code == 404 and "no scored window 99" in window.json()["detail"]
        assert post("promote").status_code == 404

        pin = post("pin", by="ana")
        assert pin.status_code == 202, pin.text
        command_id = pin.json()["command_id"]
        pinned = wait_for(lambda: (s := state()) and s["last_command"]
                          and s["last_command"]["command_id"] == command_id and s, "the pin")
        assert pinned["pinned"] and pinned["last_command"]["outcome"] == "applied"
        refused = post("rebaseline", next=20)
        assert refused.status_code == 409 and "pinned" in refused.json()["detail"]

        # The CLI: same read model, same commands.
        code, out, _ = cli("list")
        assert code == 0 and SEGMENT in out and "v1 first_window n=20 pinned" in out
        code, _, err = cli("rebaseline", SEGMENT, "--record-type", "llm", "--next", "20")
        assert code == 1 and "pinned" in err
        code, _, err = cli("pin", "nope|m9", "--record-type", "llm")
        assert code == 2 and "no reference is known for segment 'nope|m9'" in err
        code, out, _ = cli("unpin", SEGMENT, "--record-type", "llm", "--wait", "60")
        assert code == 0 and "applied" in out, out
        code, out, _ = cli("rebaseline", SEGMENT, "--record-type", "llm", "--next", "20",
                           "--wait", "60")
        assert code == 0 and "the next 20 records become reference v2" in out, out

        produce_calls(kafka_config, topics, 60, 3.0, seed=2)
        wait_for(lambda: (s := state()) and s["current"] == 2, "reference v2")
        scored = wait_for(lambda: [r for r in admin.get("/api/v1/drift", headers=AUTH).json()[
            "results"] if r["reference_version"] == 2], "a window scored against v2")
        assert scored[0]["n_reference"] == 20
        code, out, _ = cli("show", SEGMENT, "--record-type", "llm", "--json")
        shown = json.loads(out)
        assert [(v["version"], v["source"]) for v in shown["versions"]] == [
            (1, "first_window"), (2, "rebaseline:next")]
        assert shown["versions"][1]["detail"]["by"]
    finally:
        admin.close()
        runtime.stop()
    assert runtime.errors() == {}


def test_a_retired_streams_deleted_state_leaves_the_view_and_the_cli_reader(
    kafka_config: KafkaConfig,
) -> None:
    """A stream retired at drift.max_streams (drift.retirement) tombstones its state on
    observer.references: the admin API's view and the CLI's reader stop listing it."""
    from observer.drift.reference_client import read_states
    from observer.drift.reference_routes import references_slot
    from observer.drift.references import Versions, state_key, state_record
    from observer.views import TopicView

    topics = Topics.from_config(kafka_config)
    keys = {s: state_key("llm", f"{s}|m1") for s in ("a", "b")}
    producer = make_producer(kafka_config)
    view = TopicView(kafka_config, topics.references, references_slot).start()
    try:
        produce_all(producer, [Output(topics.references, keys[s], encode(state_record(
            {"service": s, "model": "m1"}, f"{s}|m1", "llm", Versions(), []))) for s in keys], 10)
        wait_for(lambda: len(view.latest()) == 2, "both states in the view")
        assert set(read_states(kafka_config, topics)) == set(keys.values())

        produce_all(producer, [Output(topics.references, keys["a"], None)], 10)
        wait_for(lambda: [r.segment_key for r in view.latest()] == ["b|m1"], "a's state gone")
        assert set(read_states(kafka_config, topics)) == {keys["b"]}
    finally:
        view.stop()
        producer.close()
