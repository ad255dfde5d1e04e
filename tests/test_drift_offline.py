"""``observer drift score``: files in, one verdict per segment and window out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.drift_support import score_files

OBSERVER = str(Path(sys.executable).with_name("observer"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    d = tmp_path_factory.mktemp("score")
    n = 2400
    ref = pd.DataFrame({
        "ts": pd.date_range("2026-01-01", periods=n, freq="1min", tz="UTC"),
        "tokens": rng.lognormal(5, 0.5, n),
        "turns": rng.integers(1, 4, n),
        "reason": rng.choice(["stop", "length", "tool_calls"], n, p=[0.8, 0.1, 0.1]),
        "ok": rng.choice([True, False], n, p=[0.95, 0.05]),
        "svc": rng.choice(["a", "b"], n),
    })
    cur = ref.copy()
    cur["ts"] = pd.date_range("2026-01-10", periods=n, freq="1min", tz="UTC")
    cur.loc[n // 2:, "tokens"] *= 1.6  # the second half drifts
    cur.loc[n // 2:, "reason"] = rng.choice(["stop", "length"], n - n // 2, p=[0.5, 0.5])
    paths = {"ref": d / "ref.parquet", "cur": d / "cur.csv", "bad": d / "bad.parquet"}
    ref.to_parquet(paths["ref"])
    cur.to_csv(paths["cur"], index=False)
    paths["bad"].write_bytes(b"this is not parquet")
    return paths


def test_count_windows_find_the_change(files: dict[str, Path]) -> None:
    code, results, _ = score_files(files, window_size=600, time_column="ts", drift_share=0.4)
    assert code == 0
    assert [r["window"]["index"] for r in results] == [1, 2, 3, 4]
    assert [r["drift"] for r in results] == [False, False, True, True]
    first = results[0]
    assert set(first) == {"segment", "window", "features", "drift_share", "drift"}
    assert set(first["window"]) == {"index", "start", "end", "n"} and first["window"]["n"] == 600
    assert set(first["features"]) == {"tokens", "turns", "reason", "ok", "svc"}  # not ts
    f = first["features"]["tokens"]
    assert set(f) == {"method", "statistic", "threshold", "drift"}
    # Evidently's choice for 2400 reference rows: Wasserstein and Jensen-Shannon.
    assert f["method"] == "wasserstein" and first["features"]["reason"]["method"] == "jensenshannon"


def test_time_windows_and_segments(files: dict[str, Path]) -> None:
    code, results, _ = score_files(files, window="12h", time_column="ts", segment_by=["svc"],
                             features=["tokens", "reason"])
    assert code == 0
    assert [r["segment"] for r in results] == [{"svc": "a"}] * 4 + [{"svc": "b"}] * 4
    starts = [r["window"]["start"] for r in results[:4]]
    assert starts == ["2026-01-10T00:00:00+00:00", "2026-01-10T12:00:00+00:00",
                      "2026-01-11T00:00:00+00:00", "2026-01-11T12:00:00+00:00"]
    assert results[0]["window"]["end"] == "2026-01-10T12:00:00+00:00"
    a = [r for r in results if r["segment"] == {"svc": "a"}]
    assert sum(r["window"]["n"] for r in a) == int((pd.read_csv(files["cur"])["svc"] == "a").sum())
    assert not a[0]["drift"] and a[-1]["drift"]


def test_method_and_threshold_apply_to_every_feature(files: dict[str, Path]) -> None:
    code, results, _ = score_files(files, features=["tokens", "turns"], method="psi", threshold=0.2)
    assert code == 0 and len(results) == 1
    assert {f["method"] for f in results[0]["features"].values()} == {"psi"}
    assert {f["threshold"] for f in results[0]["features"].values()} == {0.2}


def test_agrees_with_evidently_column_by_column(files: dict[str, Path]) -> None:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    registry = pytest.importorskip("evidently.legacy.calculations.stattests.registry")
    from evidently.legacy.core import ColumnType

    code, [result], _ = score_files(files, features=["tokens", "turns", "reason", "ok"])
    assert code == 0
    ref, cur = pd.read_parquet(files["ref"]), pd.read_csv(files["cur"])
    names = {"z": "ztest"}
    for name, kind in (("tokens", ColumnType.Numerical), ("turns", ColumnType.Numerical),
                       ("reason", ColumnType.Categorical), ("ok", ColumnType.Categorical)):
        test = registry.get_stattest(ref[name], cur[name], kind, None)
        expected = test(ref[name], cur[name], kind, None)
        ours = result["features"][name]
        assert ours["method"] == names.get(test.name, test.name)
        assert ours["statistic"] == pytest.approx(float(expected.drift_score), rel=1e-6)
        assert ours["drift"] == bool(expected.drifted)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"features": ["nope"]}, "reference has no column 'nope'"),
        ({"window": "12h"}, "--window needs --time-column"),
        ({"window": "soon", "time_column": "ts"}, "bad duration 'soon'"),
        ({"segment_by": ["tenant"]}, "no column 'tenant'"),
        ({"method": "ks", "features": ["reason"]}, "'ks' does not apply to categorical"),
        ({"time_column": "tokens", "window": "1h"}, None),  # numeric times are Unix seconds
    ],
)
def test_bad_options_get_one_clear_line(files: dict[str, Path], options: dict[str, Any],
                                        message: str | None) -> None:
    code, _, err = score_files(files, **options)
    if message is None:
        assert code == 0
        return
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_the_command_line(files: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "OBSERVER_CONFIG": ""}
    ok = subprocess.run(
        [OBSERVER, "drift", "score", "--reference", str(files["ref"]), "--current",
         str(files["cur"]), "--window-size", "1200", "--features", "tokens,reason",
         "--format", "table"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].split()[:4] == ["segment", "window", "n", "share"]
    assert "ok" in lines[1] and "DRIFT" in lines[2] and "tokens wasserstein=" in lines[2]
    bad = subprocess.run(
        [OBSERVER, "drift", "score", "--reference", str(files["bad"]), "--current",
         str(files["cur"])], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith(f"observer drift score: {files['bad']}: cannot read it as parquet")
    assert len(bad.stderr.strip().splitlines()) == 1
