"""Page-Hinkley and ADWIN behind River's protocol: update(x) returns self, drift_detected;
plus their checkpointable state."""

from __future__ import annotations

import json
import math
import random

import pytest

from observer.drift.detectors import ADWIN, DETECTORS, ChangeDetector, PageHinkley, make_detector


def detections(detector: ChangeDetector, xs: list[float]) -> list[int]:
    return [i for i, x in enumerate(xs) if detector.update(x).drift_detected]


def bernoulli(seed: int, rates: list[tuple[float, int]]) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.random() < p) for p, n in rates for _ in range(n)]


@pytest.mark.parametrize("make", [PageHinkley, ADWIN])
def test_protocol(make: type) -> None:
    d = make()
    assert d.update(1.0) is d and d.drift_detected is False


@pytest.mark.parametrize("seed", range(5))
def test_no_alarm_on_a_steady_error_rate(seed: int) -> None:
    xs = bernoulli(seed, [(0.05, 1000)])
    assert detections(ADWIN(delta=0.002), xs) == []
    assert detections(PageHinkley(threshold=50), xs) == []


@pytest.mark.parametrize("seed", range(5))
def test_error_rate_jump_is_found_after_it_happened(seed: int) -> None:
    xs = bernoulli(seed, [(0.05, 500), (0.35, 500)])
    for detector in (ADWIN(delta=0.002), PageHinkley(threshold=20)):
        found = detections(detector, xs)
        assert found and 500 <= found[0] < 800, (type(detector).__name__, found[:3])


def test_adwin_forgets_the_old_level() -> None:
    ad = ADWIN()
    detections(ad, bernoulli(3, [(0.05, 400), (0.5, 400)]))
    assert abs(ad.estimation - 0.5) < 0.1 and ad.width < 800


def test_page_hinkley_directions_and_restart() -> None:
    down = [1.0] * 100 + [0.0] * 100
    assert detections(PageHinkley(threshold=5, direction="up"), down) == []
    found = detections(PageHinkley(threshold=5, direction="down"), down)
    assert found and found[0] >= 100
    ph = PageHinkley(threshold=5)
    first = detections(ph, [0.0] * 50 + [1.0] * 50)[0]
    assert ph.update(1.0).drift_detected is False  # starts over on the new level
    assert first >= 50


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="direction"):
        PageHinkley(direction="sideways")
    with pytest.raises(ValueError, match="delta"):
        ADWIN(delta=2)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_state_through_json_continues_exactly(name: str) -> None:
    """A detector restored from its checkpointed state answers exactly like the original."""
    rng = random.Random(9)
    xs = [rng.gauss(300 if i < 700 else 360, 40) for i in range(1500)]
    params = {"direction": "up", **({"threshold": 500.0} if name == "page_hinkley" else {})}
    whole = make_detector(name, **params)
    assert len(detections(whole, xs)) >= 1  # the restored copies must cross a detection too
    for split in (0, 1, 333, 701, 1499):
        a = make_detector(name, **params)
        for x in xs[:split]:
            a.update(x)
        b = DETECTORS[name].from_state(json.loads(json.dumps(a.state())))
        rest = xs[split:]
        assert [a.update(x).drift_detected for x in rest] == [b.update(x).drift_detected for x in rest]
        assert a.state() == b.state() and a.estimation == b.estimation


def test_adwin_memory_is_logarithmic() -> None:
    ad = ADWIN(delta=0.002)
    rng = random.Random(4)
    for _ in range(100_000):
        ad.update(rng.gauss(0, 1))
    buckets = sum(len(row) for row in ad.rows) // 2  # each bucket: sum, squared deviations
    assert ad.width == 100_000  # a steady stream is never cut
    assert buckets <= ad.max_buckets * (math.log2(ad.width) + 1)
    assert len(json.dumps(ad.state())) < 4000


def test_adwin_direction() -> None:
    falling = bernoulli(5, [(0.4, 600), (0.05, 600)])
    assert detections(ADWIN(direction="up"), falling) == []
    found = detections(ADWIN(direction="down"), falling)
    assert found and found[0] >= 600
    rising = bernoulli(5, [(0.05, 600), (0.4, 600)])
    assert detections(ADWIN(direction="down"), rising) == []
    assert detections(ADWIN(direction="up"), rising)


def test_adwin_mean_and_variance_match_the_window() -> None:
    ad = ADWIN(clock=1)
    xs = [float(i % 7) for i in range(300)]
    for x in xs:
        ad.update(x)
    window = xs[-ad.width:]
    mean = sum(window) / len(window)
    assert math.isclose(ad.estimation, mean)
    assert math.isclose(ad.variance, sum((x - mean) ** 2 for x in window), rel_tol=1e-9)


def test_unknown_detector_and_parameters() -> None:
    with pytest.raises(ValueError, match="unknown change detector 'cusum'"):
        make_detector("cusum")
    with pytest.raises(ValueError, match="page_hinkley takes no parameter clock"):
        make_detector("page_hinkley", clock=3)
    with pytest.raises(ValueError, match="threshold"):
        PageHinkley(threshold=0)
