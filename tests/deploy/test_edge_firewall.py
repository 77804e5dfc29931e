"""The instance's per-address connection limits, loaded into a real kernel in network namespaces.

The ruleset is the one the cloud-init template writes (rendered by terraform with small limits).
Three namespaces stand in for the instance, the proxy container and the internet: the instance
publishes ports 80 and 443 to the container by DNAT in iptables' nat table, as Docker does, and two
client addresses connect to the instance's address. One exceeds its limit; the other is served.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_cloud_init import WITHOUT_RDS, files, render
from tests.utils.tools import missing, require_tool

PROBE = Path(__file__).with_name("edge_probe.py")
RULESET = "/etc/stockstreamer/edge-firewall.nft"
INSTANCE_ADDRESS = "198.18.0.1"  # the instance's address, as the internet sees it
GREEDY, OTHER = "198.18.0.11", "198.18.0.12"  # two clients
CONTAINER_ADDRESS = "198.19.0.2"


@dataclass
class Edge:
    """The three namespaces, by name, and the tools to drive them."""

    instance: str
    container: str
    clients: str
    ip: str
    nft: str
    iptables: str

    def run(self, namespace: str, *command: str) -> str:
        result = subprocess.run(  # noqa: S603
            [self.ip, "netns", "exec", namespace, *command],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, f"{command}: {result.stderr}"
        return result.stdout

    def probe(self, *args: str) -> dict[str, Any]:
        """One client command (edge_probe.py) from the clients' namespace."""
        out = self.run(self.clients, sys.executable, str(PROBE), *args)
        parsed: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return parsed

    def publish(self) -> None:
        """Docker's DNAT of the published ports to the container (what it rewrites on restart)."""
        nat = [self.iptables, "-t", "nat"]
        self.run(self.instance, *nat, "-N", "DOCKER")
        self.run(
            self.instance,
            *nat,
            "-A",
            "PREROUTING",
            "-m",
            "addrtype",
            "--dst-type",
            "LOCAL",
            "-j",
            "DOCKER",
        )
        for protocol, port in (("tcp", "80"), ("tcp", "443"), ("udp", "443")):
            self.run(
                self.instance,
                *nat,
                "-A",
                "DOCKER",
                "!",
                "-i",
                "ctr0",
                "-p",
                protocol,
                "--dport",
                port,
                "-j",
                "DNAT",
                "--to-destination",
                f"{CONTAINER_ADDRESS}:{port}",
            )

    def unpublish(self) -> None:
        self.run(self.instance, self.iptables, "-t", "nat", "-F")
        self.run(self.instance, self.iptables, "-t", "nat", "-X")

    def load(self, tmp_path: Path, **limits: int) -> str:
        """The ruleset the template renders with these limits, loaded into the instance."""
        text = render(tmp_path, **{**WITHOUT_RDS, **limits})
        ruleset = files(yaml.safe_load(text))[RULESET]
        path = tmp_path / "edge-firewall.nft"
        path.write_text(ruleset)
        # Twice, as a reload does: the file replaces its own table, atomically.
        self.run(self.instance, self.nft, "-f", str(path))
        self.run(self.instance, self.nft, "-f", str(path))
        return ruleset


@pytest.fixture(scope="module")
def edge() -> Iterator[Edge]:
    if os.geteuid() != 0:
        missing("network namespaces need root")
    tools = {
        "ip": require_tool("ip", package="iproute2"),
        "nft": require_tool("nft", package="nftables"),
        "iptables": require_tool("iptables", package="iptables"),
    }
    suffix = str(os.getpid())
    edge = Edge(
        instance=f"ss-instance-{suffix}",
        container=f"ss-container-{suffix}",
        clients=f"ss-clients-{suffix}",
        **tools,
    )
    ip = edge.ip
    server = None
    try:
        for namespace in (edge.instance, edge.container, edge.clients):
            subprocess.run([ip, "netns", "add", namespace], check=True)  # noqa: S603
            edge.run(namespace, ip, "link", "set", "lo", "up")
        # The internet's side: both clients on one link to the instance.
        subprocess.run(  # noqa: S603
            [ip, "link", "add", f"cli{suffix}", "netns", edge.instance, "type", "veth"]
            + ["peer", "name", f"out{suffix}", "netns", edge.clients],
            check=True,
        )
        edge.run(edge.instance, ip, "link", "set", f"cli{suffix}", "name", "cli0")
        edge.run(edge.instance, ip, "addr", "add", f"{INSTANCE_ADDRESS}/24", "dev", "cli0")
        edge.run(edge.instance, ip, "link", "set", "cli0", "up")
        edge.run(edge.clients, ip, "link", "set", f"out{suffix}", "name", "eth0")
        for address in (GREEDY, OTHER):
            edge.run(edge.clients, ip, "addr", "add", f"{address}/24", "dev", "eth0")
        edge.run(edge.clients, ip, "link", "set", "eth0", "up")
        # The container's side: its own network behind the instance, as on a Docker bridge.
        subprocess.run(  # noqa: S603
            [ip, "link", "add", f"ctr{suffix}", "netns", edge.instance, "type", "veth"]
            + ["peer", "name", f"in{suffix}", "netns", edge.container],
            check=True,
        )
        edge.run(edge.instance, ip, "link", "set", f"ctr{suffix}", "name", "ctr0")
        edge.run(edge.instance, ip, "addr", "add", "198.19.0.1/24", "dev", "ctr0")
        edge.run(edge.instance, ip, "link", "set", "ctr0", "up")
        edge.run(edge.container, ip, "link", "set", f"in{suffix}", "name", "eth0")
        edge.run(edge.container, ip, "addr", "add", f"{CONTAINER_ADDRESS}/24", "dev", "eth0")
        edge.run(edge.container, ip, "link", "set", "eth0", "up")
        edge.run(edge.container, ip, "route", "add", "default", "via", "198.19.0.1")
        edge.run(edge.instance, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        edge.publish()
        server = subprocess.Popen(  # noqa: S603
            [ip, "netns", "exec", edge.container, sys.executable, str(PROBE), "serve"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        assert json.loads(server.stdout.readline()) == {"serving": True}
        yield edge
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=10)
            if server.stdout is not None:
                server.stdout.close()
        for namespace in (edge.instance, edge.container, edge.clients):
            subprocess.run([ip, "netns", "delete", namespace], check=False)  # noqa: S603


@pytest.fixture
def no_limits(edge: Edge) -> Iterator[None]:
    """Each test loads its own limits; none outlive it."""
    yield
    table = ["inet", "stockstreamer_edge"]
    subprocess.run(  # noqa: S603
        [edge.ip, "netns", "exec", edge.instance, edge.nft, "delete", "table", *table],
        capture_output=True,
        check=False,
    )


def test_new_connections_beyond_the_rate_are_dropped_for_that_address_only(
    edge: Edge, tmp_path: Path, no_limits: None
) -> None:
    # Without the rules every connect of the burst gets through: the limit is what stops them.
    assert edge.probe("burst", GREEDY, INSTANCE_ADDRESS, "20", "0.5")["established"] == 20
    edge.load(tmp_path, edge_rate=1, edge_burst=5, edge_connections=1000)
    greedy = edge.probe("burst", GREEDY, INSTANCE_ADDRESS, "20", "0.5")
    assert 5 <= greedy["established"] <= 7, greedy  # the burst, and a token or so of rate
    # The other address is served at once, and so is its own burst.
    assert edge.probe("get", OTHER, INSTANCE_ADDRESS) == {"status": 200}
    assert edge.probe("burst", OTHER, INSTANCE_ADDRESS, "4", "0.5")["established"] == 4


def test_new_quic_flows_beyond_the_rate_are_dropped_for_that_address_only(
    edge: Edge, tmp_path: Path, no_limits: None
) -> None:
    assert edge.probe("udp", GREEDY, INSTANCE_ADDRESS, "20", "0.5")["answered"] == 20
    edge.load(tmp_path, edge_rate=1, edge_burst=5, edge_connections=1000)
    greedy = edge.probe("udp", GREEDY, INSTANCE_ADDRESS, "20", "0.5")
    assert 5 <= greedy["answered"] <= 7, greedy
    assert edge.probe("udp", OTHER, INSTANCE_ADDRESS, "3", "0.5")["answered"] == 3


@contextmanager
def holding(edge: Edge, count: int) -> Iterator[subprocess.Popen[str]]:
    """A client at the greedy address holding `count` connections open (edge_probe.py hold)."""
    command = [edge.ip, "netns", "exec", edge.clients, sys.executable, str(PROBE), "hold"]
    with subprocess.Popen(  # noqa: S603
        [*command, GREEDY, INSTANCE_ADDRESS, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None
            assert json.loads(holder.stdout.readline()) == {"held": count}
            yield holder
        finally:
            holder.kill()


def step(holder: subprocess.Popen[str]) -> dict[str, object]:
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    parsed: dict[str, object] = json.loads(holder.stdout.readline())
    return parsed


def test_open_connections_beyond_the_limit_are_dropped_for_that_address_only(
    edge: Edge, tmp_path: Path, no_limits: None
) -> None:
    edge.load(tmp_path, edge_rate=1000, edge_burst=1000, edge_connections=3)
    with holding(edge, 3) as holder:
        # Another address is served while the first holds its three.
        assert edge.probe("get", OTHER, INSTANCE_ADDRESS) == {"status": 200}
        assert step(holder) == {"one_more": False}, "a fourth from the same address is dropped"
        assert step(holder) == {"after_closing_one": True}, "a closed one frees its place"


def test_limits_survive_docker_rewriting_its_rules(
    edge: Edge, tmp_path: Path, no_limits: None
) -> None:
    """Docker flushes and rewrites its own nat rules when it restarts; our table is apart."""
    edge.load(tmp_path, edge_rate=1000, edge_burst=1000, edge_connections=3)
    edge.unpublish()
    edge.publish()
    listed = edge.run(edge.instance, edge.nft, "list", "table", "inet", "stockstreamer_edge")
    assert "ct count over 3" in listed
    with holding(edge, 3) as holder:
        assert step(holder) == {"one_more": False}
        assert step(holder) == {"after_closing_one": True}


def test_the_ruleset_only_touches_its_own_table(edge: Edge, tmp_path: Path) -> None:
    """Loading it (twice) leaves one table of ours beside the nat rules, which still work."""
    ruleset = edge.load(tmp_path, edge_rate=10, edge_burst=40, edge_connections=64)
    assert "flush ruleset" not in ruleset
    tables = edge.run(edge.instance, edge.nft, "list", "tables").split("\n")
    assert tables.count("table inet stockstreamer_edge") == 1
    assert any(t.startswith("table ip nat") for t in tables), "Docker's nat table untouched"
    assert edge.probe("get", OTHER, INSTANCE_ADDRESS) == {"status": 200}
    edge.run(edge.instance, edge.nft, "delete", "table", "inet", "stockstreamer_edge")
