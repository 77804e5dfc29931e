"""The CPUs a process may use: its affinity, and cgroup v1 and v2 CPU quotas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.cpus import available_cpus, cgroup_cpu_quota
from services.runner.processes import ROOT

V2_MOUNTS = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = (
    "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n"
    "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro - cgroup cgroup rw,cpu,cpuacct\n"
    "33 31 0:30 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
)


def layout(root: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    """A directory laid out like / for the files cgroup_cpu_quota reads."""
    for path, text in {
        "proc/self/cgroup": cgroup,
        "proc/self/mountinfo": mountinfo,
        **files,
    }.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def test_cgroup_v2_quota_of_the_process_or_a_parent(tmp_path: Path) -> None:
    own = layout(
        tmp_path / "own",
        "0::/system.slice/app.service\n",
        V2_MOUNTS,
        {
            "sys/fs/cgroup/cpu.max": "max 100000\n",
            "sys/fs/cgroup/system.slice/cpu.max": "max 100000\n",
            "sys/fs/cgroup/system.slice/app.service/cpu.max": "150000 100000\n",
        },
    )
    parent = layout(
        tmp_path / "parent",
        "0::/system.slice/app.service\n",
        V2_MOUNTS,
        {
            "sys/fs/cgroup/system.slice/cpu.max": "50000 100000\n",
            "sys/fs/cgroup/system.slice/app.service/cpu.max": "max 100000\n",
        },
    )
    # a container with its own cgroup namespace sees itself at the root
    container = layout(
        tmp_path / "container", "0::/\n", V2_MOUNTS, {"sys/fs/cgroup/cpu.max": "200000 100000\n"}
    )
    unlimited = layout(
        tmp_path / "unlimited", "0::/\n", V2_MOUNTS, {"sys/fs/cgroup/cpu.max": "max 100000\n"}
    )
    assert cgroup_cpu_quota(own) == 1.5
    assert cgroup_cpu_quota(parent) == 0.5
    assert cgroup_cpu_quota(container) == 2.0
    assert cgroup_cpu_quota(unlimited) is None


def test_cgroup_v1_quota_where_the_cpu_controller_is_mounted(tmp_path: Path) -> None:
    cgroups = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    limited = layout(
        tmp_path / "limited",
        cgroups,
        V1_MOUNTS,
        {
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "250000\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    unlimited = layout(
        tmp_path / "unlimited",
        cgroups,
        V1_MOUNTS,
        {
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_quota(limited) == 2.5
    assert cgroup_cpu_quota(unlimited) is None
    assert cgroup_cpu_quota(tmp_path / "nothing") is None  # no /proc: no quota known


def test_a_fractional_quota_rounds_up_within_the_affinity(tmp_path: Path) -> None:
    root = layout(tmp_path, "0::/\n", V2_MOUNTS, {"sys/fs/cgroup/cpu.max": "50000 100000\n"})
    assert available_cpus(root) == 1
    (root / "sys/fs/cgroup/cpu.max").write_text("1000000 100000\n")  # 10 CPUs' worth
    assert available_cpus(root) == len(os.sched_getaffinity(0))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_the_affinity_mask_bounds_the_cpus() -> None:
    one = min(os.sched_getaffinity(0))
    code = "from services.common.cpus import available_cpus; print(available_cpus())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        preexec_fn=lambda: os.sched_setaffinity(0, {one}),
    ).stdout
    assert out.strip() == "1"
