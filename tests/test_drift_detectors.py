"""Page-Hinkley and ADWIN behind River's protocol: update(x) returns self, drift_detected."""

from __future__ import annotations

import random

import pytest

from drift.detectors import ADWIN, ChangeDetector, PageHinkley


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
    assert abs(ad.estimation - 0.5) < 0.1 and len(ad.window) < 800


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
