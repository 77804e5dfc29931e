"""How many CPUs this process may use: its affinity mask, bounded by its cgroup's CPU quota."""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath


def available_cpus(root: Path = Path("/")) -> int:
    """The CPUs this process may run on, bounded by the cgroup CPU quota (`cpus: 2` gives 2).

    A fractional quota rounds up: it is a budget of CPU time, not of cores, so 1.5 CPUs are
    best spent by two processes that together may use 1.5 cores (throttled only when both are
    busy), where one would leave the half unused for good.
    """
    cpus = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """CPUs' worth of time the cgroup (or any parent) allows a period; None when unlimited.

    cgroup v2's `cpu.max`, or v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us`, of this process's
    cgroup and every parent up to the mounted root (a container sees its own at the root).
    `root` prefixes every path read (tests give a directory laid out like /proc and /sys).
    """
    try:
        cgroups = (root / "proc/self/cgroup").read_text()
        mountinfo = (root / "proc/self/mountinfo").read_text()
    except OSError:
        return None
    quotas = [
        _quota(root / str(directory).lstrip("/"), version)
        for directory, version in _cpu_cgroup_directories(cgroups, mountinfo)
    ]
    return min((q for q in quotas if q is not None), default=None)


def _cpu_cgroup_directories(cgroups: str, mountinfo: str) -> list[tuple[PurePosixPath, int]]:
    """This process's cgroup directory and each parent within the mount, with their version."""
    paths: dict[int, str] = {}  # cgroup version -> the process's path in that hierarchy
    for line in cgroups.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            paths[2] = path
        elif "cpu" in controllers.split(","):
            paths[1] = path
    found = []
    for line in mountinfo.splitlines():
        fields, _, tail = line.partition(" - ")
        parts, fs = fields.split(), tail.split()
        if len(parts) < 5 or len(fs) < 3:
            continue
        if fs[0] == "cgroup2":
            version = 2
        elif fs[0] == "cgroup" and "cpu" in fs[2].split(","):
            version = 1
        else:
            continue
        if version not in paths:
            continue
        mount_root, mount_point = PurePosixPath(parts[3]), PurePosixPath(parts[4])
        try:
            relative = PurePosixPath(paths[version]).relative_to(mount_root)
        except ValueError:
            relative = PurePosixPath()  # a namespace's view: the mount's root is this cgroup
        found.append((mount_point / relative, version))
        found += [(mount_point / parent, version) for parent in relative.parents]
    return found


def _quota(directory: Path, version: int) -> float | None:
    """The directory's quota in CPUs; None when it sets none (or holds no CPU controller)."""
    try:
        if version == 2:
            limit, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
            if limit == "max":
                return None
            return int(limit) / int(period or "100000")
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        if quota <= 0:  # -1: no quota
            return None
        return quota / int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None
