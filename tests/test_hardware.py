"""Machine facts from made-up machines: CPU flags, cgroup CPU quotas, free cores."""

import subprocess
import sys
import time

import pytest

from carekit import hardware
from carekit.hardware import Cpu, cpu_quota, free_cores, parse_cpuinfo, usable_cores

ICE_LAKE = "model name\t: Intel(R) Xeon(R) Platinum 8375C\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n"
SAPPHIRE_RAPIDS = (
    "model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
)
ZEN4 = "model name\t: AMD EPYC 9R14\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"
ZEN3 = "model name\t: AMD EPYC 7R13 Processor\nflags\t\t: avx2 fma\n"
GRAVITON3 = "processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(
    ("text", "arch", "native"),
    [(ICE_LAKE, "x86_64", False), (ZEN3, "x86_64", False), (SAPPHIRE_RAPIDS, "x86_64", True), (ZEN4, "x86_64", True),
     (GRAVITON3, "aarch64", None), ("processor\t: 0\n", "x86_64", None)],
)  # fmt: skip
def test_native_bfloat16_comes_from_the_flags_and_is_unknown_without_them(text, arch, native):
    assert parse_cpuinfo(text, arch).native_bf16() is native


def test_cpu_model_and_flags_are_read():
    cpu = parse_cpuinfo(ICE_LAKE, "x86_64")
    assert cpu.model.startswith("Intel(R) Xeon(R) Platinum 8375C") and "avx512f" in cpu.flags
    assert "bf16" in parse_cpuinfo(GRAVITON3, "aarch64").flags
    assert Cpu("mystery", "x86_64", None).native_bf16() is None


def write(path, name, text):
    path.mkdir(parents=True, exist_ok=True)
    (path / name).write_text(text)


def test_cgroup_v2_quota_takes_the_tightest_level(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    write(tmp_path / "job" / "step", "cpu.max", "max 100000\n")
    assert cpu_quota(tmp_path, "0::/job/step\n") is None
    write(tmp_path / "job", "cpu.max", "150000 100000\n")  # the job's 1.5 CPUs bind its step
    assert cpu_quota(tmp_path, "0::/job/step\n") == pytest.approx(1.5)
    write(tmp_path / "job" / "step", "cpu.max", "50000 100000\n")
    assert cpu_quota(tmp_path, "0::/job/step\n") == pytest.approx(0.5)


def test_cgroup_v1_quota_and_its_unlimited_value(tmp_path):
    membership = "4:memory:/slurm/job\n3:cpu,cpuacct:/slurm/job\n0::/\n"
    folder = tmp_path / "cpu" / "slurm" / "job"
    write(folder, "cpu.cfs_quota_us", "-1\n")
    write(folder, "cpu.cfs_period_us", "100000\n")
    assert cpu_quota(tmp_path, membership) is None
    write(folder, "cpu.cfs_quota_us", "300000\n")
    assert cpu_quota(tmp_path, membership) == pytest.approx(3.0)


def test_usable_and_free_cores():
    assert usable_cores(cpus=8, quota=2.5) == 3  # a quota of 2.5 CPUs keeps 3 threads busy
    assert usable_cores(cpus=2, quota=None) == 2
    assert usable_cores(cpus=4, quota=0.2) == 1
    assert free_cores(usable=2, load=0.0) == 2
    assert free_cores(usable=2, load=1.0) == 1  # another process holds a core
    assert free_cores(usable=2, load=2.7) == 1  # at least one
    assert free_cores(usable=8, load=2.4) == 6


def test_load_of_other_processes_is_measured():
    spin = "import time\nend = time.time() + 5\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        assert hardware.others_load(0.3) > 0.5  # the spinner keeps most of a core
    finally:
        spinner.kill()
