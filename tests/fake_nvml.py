"""A stand-in for the ``pynvml`` module, serving the real H100 recording
(``tests/fixtures/gpu/h100_nvml_trace.csv``) for tests on machines without a GPU.

It keeps pynvml's contract where our collector depends on it: the same function names and
argument order, pynvml's own exception classes raised with NVML's return codes (calls
before ``nvmlInit`` are NVML_ERROR_UNINITIALIZED, unknown handles NVML_ERROR_INVALID_ARGUMENT,
utilisation/power/energy on a MIG instance handle NVML_ERROR_NOT_SUPPORTED, an empty MIG slot
NVML_ERROR_NOT_FOUND), and pynvml's ctypes structures as return values. It counts calls per
function so tests can check which fields were read how often.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

TRACE = Path(__file__).resolve().parent / "fixtures" / "gpu" / "h100_nvml_trace.csv"


@dataclass
class FakeMig:
    uuid: str
    gi_id: int
    slices: int
    memory_mb: int
    used_bytes: int = 0
    pids: list[int] = field(default_factory=list)


@dataclass
class FakeGPU:
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    migs: list[FakeMig] = field(default_factory=list)
    mig_slots: int = 7
    pids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Handle:
    gpu: int
    mig: int | None = None


class FakeNVML:
    """Module-like: pass it where the collector takes ``nvml``. ``advance()`` moves every
    device to the trace's next row."""

    NVMLError = pynvml.NVMLError
    NVMLError_NotFound = pynvml.NVMLError_NotFound
    NVML_DEVICE_MIG_ENABLE = pynvml.NVML_DEVICE_MIG_ENABLE
    NVML_DEVICE_MIG_DISABLE = pynvml.NVML_DEVICE_MIG_DISABLE
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_CLOCK_SM = pynvml.NVML_CLOCK_SM

    def __init__(self, gpus: list[FakeGPU], trace: Path = TRACE) -> None:
        with open(trace, newline="") as f:
            self.rows = list(csv.DictReader(f))
        self.gpus = gpus
        self.row = 0
        self.initialised = False
        self.calls: Counter[str] = Counter()

    def advance(self) -> dict[str, str]:
        self.row += 1
        return self.current()

    def current(self) -> dict[str, str]:
        return self.rows[self.row % len(self.rows)]

    # -- contract checks ------------------------------------------------------------------
    def _call(self, name: str, handle: Any = None, *, device_only: bool = False) -> dict[str, str]:
        self.calls[name] += 1
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if handle is not None:
            if not isinstance(handle, _Handle) or handle.gpu >= len(self.gpus):
                raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if handle.mig is None and self.gpus[handle.gpu].migs and name == "utilization":
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)  # MIG mode parent
            if device_only and handle.mig is not None:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.current()

    def _mig(self, h: _Handle) -> FakeMig | None:
        return None if h.mig is None else self.gpus[h.gpu].migs[h.mig]

    # -- pynvml's functions ---------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls["init"] += 1
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self._call("shutdown")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        self._call("count")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> _Handle:
        self._call("handle")
        if not 0 <= i < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(i)

    def nvmlDeviceGetUUID(self, h: _Handle) -> str:
        self._call("uuid", h)
        mig = self._mig(h)
        return mig.uuid if mig else self.gpus[h.gpu].uuid

    def nvmlDeviceGetName(self, h: _Handle) -> str:
        self._call("name", h)
        return self.gpus[h.gpu].name

    def nvmlDeviceGetMigMode(self, h: _Handle) -> list[int]:
        self._call("mig_mode", h, device_only=True)
        mode = (
            pynvml.NVML_DEVICE_MIG_ENABLE
            if self.gpus[h.gpu].migs
            else pynvml.NVML_DEVICE_MIG_DISABLE
        )
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: _Handle) -> int:
        self._call("max_mig", h, device_only=True)
        return self.gpus[h.gpu].mig_slots

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: _Handle, j: int) -> _Handle:
        self._call("mig_handle", h, device_only=True)
        if j >= self.gpus[h.gpu].mig_slots:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if j >= len(self.gpus[h.gpu].migs):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return _Handle(h.gpu, j)

    def nvmlDeviceGetAttributes(self, h: _Handle) -> Any:
        self._call("attributes", h)
        mig = self._mig(h)
        attrs = pynvml.c_nvmlDeviceAttributes()
        attrs.gpuInstanceSliceCount = mig.slices if mig else 7
        attrs.computeInstanceSliceCount = mig.slices if mig else 7
        attrs.memorySizeMB = mig.memory_mb if mig else 81559
        return attrs

    def nvmlDeviceGetGpuInstanceId(self, h: _Handle) -> int:
        self._call("gi_id", h)
        mig = self._mig(h)
        if mig is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return mig.gi_id

    def nvmlDeviceGetUtilizationRates(self, h: _Handle) -> Any:
        row = self._call("utilization", h, device_only=True)
        return pynvml.c_nvmlUtilization_t(int(row["gpu_util_pct"]), int(row["mem_util_pct"]))

    def nvmlDeviceGetMemoryInfo(self, h: _Handle) -> Any:
        row = self._call("memory", h)
        mig = self._mig(h)
        total = mig.memory_mb * 2**20 if mig else int(row["fb_total_bytes"])
        used = mig.used_bytes if mig else int(row["fb_used_bytes"])
        return pynvml.c_nvmlMemory_t(total, total - used, used)

    def nvmlDeviceGetPowerUsage(self, h: _Handle) -> int:
        return int(self._call("power", h, device_only=True)["power_mw"])

    def nvmlDeviceGetTotalEnergyConsumption(self, h: _Handle) -> int:
        return int(self._call("energy", h, device_only=True)["energy_mj"])

    def nvmlDeviceGetTemperature(self, h: _Handle, sensor: int) -> int:
        row = self._call("temperature", h, device_only=True)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(row["temp_c"])

    def nvmlDeviceGetClockInfo(self, h: _Handle, clock: int) -> int:
        row = self._call("sm_clock", h, device_only=True)
        if clock != pynvml.NVML_CLOCK_SM:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return int(row["sm_clock_mhz"])

    def nvmlDeviceGetComputeRunningProcesses(self, h: _Handle) -> list[Any]:
        self._call("processes", h)
        mig = self._mig(h)
        pids = mig.pids if mig else self.gpus[h.gpu].pids
        return [
            SimpleNamespace(pid=p, usedGpuMemory=1 << 30, gpuInstanceId=0, computeInstanceId=0)
            for p in pids
        ]
