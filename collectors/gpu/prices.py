"""What a GPU, a MIG slice or a time-sliced share costs per hour.

The table comes from configuration (``gpu.prices``): ``{GPU model: {capacity type: $/h}}``.
Device names are long and vendor-specific ("NVIDIA H100 80GB HBM3"), price sheets are not
("H100"), so a key matches when it is contained in the device name, case-insensitively, and
the longest matching key wins ("H100 NVL" beats "H100").

>>> table = PriceTable({"H100": {"on-demand": 4.0, "spot": 1.6}, "A100": {"on-demand": 2.0}})
>>> table.per_hour("NVIDIA H100 80GB HBM3", "spot")
1.6
>>> table.per_hour("NVIDIA H100 80GB HBM3", "spot", fraction=0.5)
0.8
>>> table.per_hour("Tesla T4", "on-demand") is None
True
"""

from __future__ import annotations

from collections.abc import Mapping

# Karpenter's node label values, and the spellings clouds use for the same two things.
CAPACITY_ALIASES: dict[str, str] = {
    "on-demand": "on-demand",
    "ondemand": "on-demand",
    "on_demand": "on-demand",
    "regular": "on-demand",
    "spot": "spot",
    "preemptible": "spot",
}

# MIG on A100/H100/H200/B200 divides a GPU into 7 compute slices; "3g.40gb" holds 3 of them.
MIG_SLICES_PER_GPU = 7
# mig_profile of a MIG-mode GPU's own sample: the slices no MIG instance holds.
UNPARTITIONED = "unpartitioned"


def normalise_capacity(capacity_type: str) -> str:
    """Karpenter's ``karpenter.sh/capacity-type`` and cloud spellings, folded to one name.

    >>> normalise_capacity("ON_DEMAND"), normalise_capacity("preemptible"), normalise_capacity("reserved")
    ('on-demand', 'spot', 'reserved')
    """
    key = capacity_type.strip().lower()
    return CAPACITY_ALIASES.get(key, key)


def mig_fraction(profile: str, overrides: Mapping[str, float] | None = None) -> float:
    """Share of the whole GPU a MIG profile stands for: configured, else compute slices / 7.

    >>> round(mig_fraction("3g.40gb"), 4), mig_fraction("1g.10gb", {"1g.10gb": 0.125})
    (0.4286, 0.125)
    >>> mig_fraction("weird")
    Traceback (most recent call last):
    ...
    ValueError: MIG profile 'weird' is not '<n>g.<mem>gb'; set gpu.mig_fractions for it
    """
    if overrides and profile in overrides:
        return overrides[profile]
    head = profile.split(".", 1)[0]
    if not (head.endswith("g") and head[:-1].isdigit()):
        raise ValueError(
            f"MIG profile {profile!r} is not '<n>g.<mem>gb'; set gpu.mig_fractions for it"
        )
    return min(int(head[:-1]) / MIG_SLICES_PER_GPU, 1.0)


class PriceTable:
    """Dollars per GPU-hour by GPU model and capacity type."""

    def __init__(self, prices: Mapping[str, Mapping[str, float]]) -> None:
        for model, by_capacity in prices.items():
            for capacity, price in by_capacity.items():
                if price < 0:
                    raise ValueError(f"gpu.prices[{model!r}][{capacity!r}] is negative: {price}")
        # Longest key first, so the most specific name wins.
        self._rows = sorted(
            (
                (model.lower(), {normalise_capacity(c): float(p) for c, p in by_capacity.items()})
                for model, by_capacity in prices.items()
            ),
            key=lambda row: -len(row[0]),
        )

    def per_hour(self, gpu_model: str, capacity_type: str, fraction: float = 1.0) -> float | None:
        """Price of ``fraction`` of one GPU for an hour; None when the table has no price."""
        name = gpu_model.lower()
        capacity = normalise_capacity(capacity_type)
        for key, by_capacity in self._rows:
            if key in name:
                price = by_capacity.get(capacity)
                return None if price is None else price * fraction
        return None
