"""The node collector: every GPU and MIG instance on this node, read through NVML
(``nvidia-ml-py``).

Cheap fields (utilisation, memory, power, temperature, SM clock: 3-17 us a call on an H100)
are read every ``gpu.sample_interval_s``; the energy counter (about 3.9 ms a call) and the
process list every ``gpu.slow_interval_s``: samples between slow polls have no energy reading
and keep the last pod attribution.
Without NVML (no driver, no GPU) :meth:`NVMLSampler.open` raises :class:`NVMLUnavailable`
with the reason; nothing is made up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from observer.collectors.gpu.attribution import PodRef, PodResolver
from observer.collectors.gpu.prices import MIG_SLICES_PER_GPU, UNPARTITIONED, mig_fraction
from observer.collectors.gpu.config import GPUConfig
from observer.core.extras import require
from observer.core.records import GPUSample

log = logging.getLogger(__name__)


class NVMLUnavailable(RuntimeError):
    """NVML could not be loaded or initialised on this machine."""


@dataclass
class _Device:
    handle: Any
    uuid: str
    name: str
    index: int | None
    parent: _Device | None = None
    mig_instance: str = ""
    mig_profile: str = ""
    fraction: float = 1.0
    slow: dict[str, Any] = field(default_factory=dict)  # last energy reading, pods


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class NVMLSampler:
    """Reads NVML; ``nvml`` is the ``pynvml`` module (tests pass a recording-backed one)."""

    def __init__(
        self,
        cfg: GPUConfig,
        node: str,
        nvml: Any = None,
        resolver: PodResolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.nvml = nvml
        self.resolver = resolver or PodResolver()
        self.clock = clock
        self.devices: list[_Device] = []
        self._warned: set[tuple[str, str]] = set()

    # -- lifecycle ---------------------------------------------------------------------
    def open(self) -> NVMLSampler:
        if self.nvml is None:
            self.nvml = require("pynvml", extra="gpu",
                                feature="NVML GPU sampling (collect-gpu, gpu.source: nvml)")
        n = self.nvml
        try:
            n.nvmlInit()
        except n.NVMLError as e:
            raise NVMLUnavailable(
                f"NVML is not available: {e}. This needs an NVIDIA driver and GPU; in a pod, "
                "the NVIDIA container runtime (or a hostPath mount of libnvidia-ml.so.1)."
            ) from None
        self.devices = self._enumerate()
        return self

    def close(self) -> None:
        if self.nvml is not None and self.devices is not None:
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass

    def __enter__(self) -> NVMLSampler:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _enumerate(self) -> list[_Device]:
        n = self.nvml
        out = []
        for i in range(n.nvmlDeviceGetCount()):
            h = n.nvmlDeviceGetHandleByIndex(i)
            dev = _Device(h, _text(n.nvmlDeviceGetUUID(h)), _text(n.nvmlDeviceGetName(h)), i)
            out.append(dev)
            mig = self._read(dev, "mig_mode", n.nvmlDeviceGetMigMode, h)
            if not mig or mig[0] != n.NVML_DEVICE_MIG_ENABLE:
                continue
            for j in range(n.nvmlDeviceGetMaxMigDeviceCount(h)):
                try:
                    mh = n.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
                except n.NVMLError_NotFound:
                    continue  # an empty slot
                attrs = n.nvmlDeviceGetAttributes(mh)
                slices = attrs.gpuInstanceSliceCount
                profile = f"{slices}g.{round(attrs.memorySizeMB / 1024)}gb"
                fraction = (
                    self.cfg.mig_fractions[profile]
                    if profile in self.cfg.mig_fractions
                    else mig_fraction(profile)
                    if slices
                    else 1 / MIG_SLICES_PER_GPU
                )
                out.append(
                    _Device(
                        mh,
                        _text(n.nvmlDeviceGetUUID(mh)),
                        dev.name,
                        i,
                        parent=dev,
                        mig_instance=str(n.nvmlDeviceGetGpuInstanceId(mh)),
                        mig_profile=profile,
                        fraction=fraction,
                    )
                )
            # The device's own sample stands for the slices no instance holds (waste), so the
            # shares of one GPU always add up to the whole GPU's price and power.
            dev.fraction = round(1.0 - sum(d.fraction for d in out if d.parent is dev), 9)
            dev.mig_profile = UNPARTITIONED
        return [d for d in out if d.fraction > 0]

    # -- reading -----------------------------------------------------------------------
    def _read(self, dev: _Device, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One NVML call; None when the device does not support it (MIG utilisation...)."""
        try:
            return fn(*args)
        except self.nvml.NVMLError as e:
            if (dev.uuid, what) not in self._warned:
                self._warned.add((dev.uuid, what))
                log.info("NVML %s on %s: %s (left empty)", what, dev.uuid, e)
            return None

    def _pods(self, dev: _Device) -> list[PodRef]:
        n = self.nvml
        procs = (
            self._read(dev, "processes", n.nvmlDeviceGetComputeRunningProcesses, dev.handle) or []
        )
        refs = {r.uid: r for p in procs if (r := self.resolver.for_pid(p.pid)) is not None}
        return sorted(refs.values(), key=lambda r: r.uid)

    def sample(self, slow: bool) -> list[GPUSample]:
        """One reading of every device; ``slow`` also reads energy and processes."""
        n = self.nvml
        now = int(self.clock() * 1e9)
        # Power and energy belong to the physical device: read once per device, even when
        # only its MIG instances are listed.
        owners = {(d.parent or d).uuid: d.parent or d for d in self.devices}
        power_of: dict[str, float | None] = {}
        for uuid, owner in owners.items():
            mw = self._read(owner, "power", n.nvmlDeviceGetPowerUsage, owner.handle)
            power_of[uuid] = None if mw is None else mw / 1000.0
            if slow:
                owner.slow["energy_mj"] = self._read(
                    owner, "energy", n.nvmlDeviceGetTotalEnergyConsumption, owner.handle
                )
        out = []
        for dev in self.devices:
            h = dev.handle
            owner = dev.parent or dev
            if slow:
                dev.slow["pods"] = self._pods(dev)
            util = self._read(dev, "utilization", n.nvmlDeviceGetUtilizationRates, h)
            mem = self._read(dev, "memory", n.nvmlDeviceGetMemoryInfo, h)
            temp = self._read(
                owner,
                "temperature",
                n.nvmlDeviceGetTemperature,
                owner.handle,
                n.NVML_TEMPERATURE_GPU,
            )
            clock = self._read(
                owner, "sm_clock", n.nvmlDeviceGetClockInfo, owner.handle, n.NVML_CLOCK_SM
            )
            # Power and energy are the device's; a MIG instance is charged its share.
            power = power_of.get(owner.uuid)
            # A counter reading is only true at the time it was taken: none between slow polls.
            energy_mj = owner.slow.get("energy_mj") if slow else None
            pods: list[PodRef] = dev.slow.get("pods", [])
            out.append(
                GPUSample(
                    source="nvml",
                    node=self.node,
                    gpu_uuid=owner.uuid,
                    gpu_index=dev.index,
                    gpu_model=dev.name,
                    mig_instance=dev.mig_instance,
                    mig_profile=dev.mig_profile,
                    fraction=dev.fraction,
                    # Several pods on one GPU (time-slicing): all of them, comma-separated.
                    pod=",".join(p.name or p.uid for p in pods),
                    namespace=",".join(sorted({p.namespace for p in pods if p.namespace})),
                    pod_uid=",".join(p.uid for p in pods),
                    container=",".join(p.container_id for p in pods if p.container_id),
                    time_unix_nano=now,
                    utilization_pct=None if util is None else float(util.gpu),
                    memory_util_pct=None if util is None else float(util.memory),
                    memory_used_bytes=None if mem is None else int(mem.used),
                    memory_total_bytes=None if mem is None else int(mem.total),
                    power_w=None if power is None else power * dev.fraction,
                    energy_j=None if energy_mj is None else energy_mj / 1000.0 * dev.fraction,
                    temperature_c=None if temp is None else float(temp),
                    sm_clock_mhz=None if clock is None else float(clock),
                )
            )
        return out


class Schedule:
    """When to read the slow fields: the first poll, then every ``slow_interval_s``.

    >>> s = Schedule(15.0); [s.slow_due(t) for t in (0.0, 1.0, 14.9, 15.0, 16.0)]
    [True, False, False, True, False]
    """

    def __init__(self, slow_interval_s: float) -> None:
        self.slow_interval_s = slow_interval_s
        self._next = float("-inf")

    def slow_due(self, now: float) -> bool:
        if now >= self._next:
            self._next = now + self.slow_interval_s
            return True
        return False
