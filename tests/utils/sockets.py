"""Which process holds which TCP sockets, from /proc (Linux): where the kernel put connections."""

from __future__ import annotations

import os
from pathlib import Path

ESTABLISHED, LISTEN = "01", "0A"


def _tcp(port: int, state: str) -> set[str]:
    """Inodes of the IPv4 and IPv6 TCP sockets on local `port` in `state`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, st, inode = fields[1], fields[3], fields[9]
            if int(local.rsplit(":", 1)[1], 16) == port and st == state:
                inodes.add(inode)
    return inodes


def _inodes(pid: int) -> set[str]:
    found = set()
    fds = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fds):
        try:
            target = os.readlink(fds / fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def accepted(pid: int, port: int) -> int:
    """Connections to local `port` that process `pid` has accepted and holds open."""
    return len(_inodes(pid) & _tcp(port, ESTABLISHED))


def listening(pid: int, port: int) -> bool:
    """Whether process `pid` holds a socket listening on `port`."""
    return bool(_inodes(pid) & _tcp(port, LISTEN))
