"""The NVML node collector: on the H100 recording served through pynvml's contract, pod
attribution from cgroups, and the honest failure where there is no NVML (this machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from observer.collectors.gpu.attribution import PodResolver, parse_cgroup
from observer.collectors.gpu.nvml import NVMLSampler, NVMLUnavailable, Schedule
from observer.collectors.gpu.pipeline import GPUPipeline, ListSink
from observer.collectors.gpu.config import GPUConfig
from tests.fake_nvml import FakeGPU, FakeMig, FakeNVML

POD_UID = "1c8b8f0e-7a49-4b1c-9a31-2d0f1d0c5e11"
CONTAINER = "3f2a" * 16
H100 = "GPU-85114b02-7c16-8443-d60c-496b974e8626"  # the recording's device


@pytest.fixture
def host(tmp_path: Path) -> PodResolver:
    """A host /proc with one containerised process (pid 4242) and the kubelet's pod log dirs."""
    proc, pods = tmp_path / "proc", tmp_path / "pods"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cgroup").write_text(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
        f"{POD_UID.replace('-', '_')}.slice/cri-containerd-{CONTAINER}.scope\n"
    )
    (proc / "77").mkdir()
    (proc / "77" / "cgroup").write_text("0::/system.slice/sshd.service\n")
    (pods / f"llm_llama-0_{POD_UID}" / "vllm").mkdir(parents=True)
    return PodResolver(proc, pods)


def test_samples_are_the_devices_readings(host: PodResolver) -> None:
    nvml = FakeNVML([FakeGPU(H100, pids=[4242, 77, 999])])
    t = iter(range(1_000_000, 2_000_000))
    with NVMLSampler(
        GPUConfig(), "gpu-node-1", nvml=nvml, resolver=host, clock=lambda: next(t)
    ) as s:
        seen = []
        for i in range(150):  # idle0 into matmul
            row = nvml.advance()
            [sample] = s.sample(slow=i % 10 == 0)
            seen.append((row, sample))
    assert nvml.initialised is False  # shut down on exit
    for row, sample in seen:
        assert sample.gpu_uuid == H100 and sample.node == "gpu-node-1" and sample.source == "nvml"
        assert sample.utilization_pct == int(row["gpu_util_pct"])
        assert sample.memory_used_bytes == int(row["fb_used_bytes"])
        assert sample.memory_total_bytes == int(row["fb_total_bytes"])
        assert sample.power_w == int(row["power_mw"]) / 1000
        assert sample.temperature_c == int(row["temp_c"]) and sample.sm_clock_mhz == int(
            row["sm_clock_mhz"]
        )
        # The pod that owns pid 4242; pid 77 is a host process, 999 is gone.
        assert (sample.pod, sample.namespace, sample.pod_uid, sample.container) == (
            "llama-0",
            "llm",
            POD_UID,
            CONTAINER[:12],
        )
    # The slow counter is read on slow polls only, and only then is it on the sample.
    assert nvml.calls["energy"] == 15 and nvml.calls["processes"] == 15
    assert nvml.calls["power"] == 150 and nvml.calls["utilization"] == 150
    with_energy = [(row, s) for row, s in seen if s.energy_j is not None]
    assert len(with_energy) == 15
    assert all(s.energy_j == int(row["energy_mj"]) / 1000 for row, s in with_energy)
    # The recording's phases show: idle at ~75 W, then the matmul at ~700 W and 100%.
    phases = {row["phase"] for row, _ in seen}
    assert phases == {"idle0", "matmul"}
    matmul = [s for row, s in seen if row["phase"] == "matmul" and s.utilization_pct == 100]
    assert matmul and min(s.power_w for s in matmul[5:]) > 500
    assert max(s.power_w for row, s in seen if row["phase"] == "idle0") < 90


def test_mig_instances_and_the_unpartitioned_rest(host: PodResolver) -> None:
    gpu = FakeGPU(
        H100,
        migs=[
            FakeMig(
                "MIG-aaaa", gi_id=1, slices=3, memory_mb=40448, used_bytes=30 << 30, pids=[4242]
            ),
            FakeMig("MIG-bbbb", gi_id=9, slices=1, memory_mb=9984),
        ],
    )
    nvml = FakeNVML([gpu])
    nvml.row = 100  # inside the matmul phase
    pipeline = GPUPipeline(GPUConfig(prices={"H100": {"on-demand": 7.0}}), ListSink())
    with NVMLSampler(GPUConfig(), "n1", nvml=nvml, resolver=host) as s:
        samples = [pipeline.price(x) for x in s.sample(slow=True)]
    by_profile = {x.mig_profile: x for x in samples}
    assert set(by_profile) == {"unpartitioned", "3g.40gb", "1g.10gb"}
    big, small, rest = by_profile["3g.40gb"], by_profile["1g.10gb"], by_profile["unpartitioned"]
    assert (big.mig_instance, big.pod, big.memory_used_bytes) == ("1", "llama-0", 30 << 30)
    assert big.memory_total_bytes == 40448 << 20
    assert big.utilization_pct is None  # NVML has no utilisation for MIG instances
    assert big.fraction == pytest.approx(3 / 7) and small.fraction == pytest.approx(1 / 7)
    assert rest.fraction == pytest.approx(3 / 7) and rest.idle  # nobody can use it: waste
    # The shares add up to the device: price and power.
    assert sum(x.cost_per_s for x in samples) == pytest.approx(7.0 / 3600)
    device_w = int(nvml.current()["power_mw"]) / 1000
    assert sum(x.power_w for x in samples) == pytest.approx(device_w)


def test_cgroup_v1_and_other_runtimes() -> None:
    v1 = f"12:pids:/kubepods/besteffort/pod{POD_UID}/{CONTAINER}\n11:memory:/kubepods/besteffort/pod{POD_UID}/{CONTAINER}"
    assert parse_cgroup(v1) == (POD_UID, CONTAINER[:12])
    crio = (
        f"0::/kubepods.slice/kubepods-pod{POD_UID.replace('-', '_')}.slice/crio-{CONTAINER}.scope"
    )
    assert parse_cgroup(crio) == (POD_UID, CONTAINER[:12])
    assert parse_cgroup("0::/init.scope") is None


def test_slow_schedule() -> None:
    s = Schedule(15.0)
    assert [t for t in range(61) if s.slow_due(float(t))] == [0, 15, 30, 45, 60]


def _nvml_loads() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def test_without_nvml_it_says_so_and_exits_non_zero() -> None:
    """On this machine (no GPU) the real pynvml cannot load NVML; on a GPU node it can, and
    then the same command must produce real samples instead."""
    cmd = [sys.executable, "-m", "observer.cli", "collect-gpu", "--stdout", "--duration", "0"]
    env = {"OBSERVER_ADMIN__PORT": "0", "OBSERVER_GPU__SOURCE": "nvml", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    if _nvml_loads():
        assert done.returncode == 0, done.stderr
        assert '"schema":"observer.gpu/v1"' in done.stdout
    else:
        assert done.returncode == 1
        assert "NVML is not available" in done.stderr
        assert '"schema"' not in done.stdout  # no made-up samples
        with pytest.raises(NVMLUnavailable, match="NVML Shared Library Not Found"):
            NVMLSampler(GPUConfig(), "n").open()
