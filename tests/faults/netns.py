"""A network of real hosts on one machine: one Linux network namespace per node, joined by
veth links to a bridge, with nftables rules in each namespace to cut, restore and spoil links.

Why namespaces and nftables, not a proxy per link: a node keeps one endpoint (its member
address is its identity), so every peer must reach it at the same address while a test cuts
only some links; packets dropped in the kernel make a connection *hang* the way a real
partition does (a proxy closes or refuses, which a client notices at once); and the test's own
clients, in the root namespace on the bridge, keep reaching every node while the links between
nodes are cut. ``tc netem`` would add delay, reordering and duplication, but the kernels of
this machine kind are built without it (``CONFIG_NET_SCH_NETEM`` is not set); nftables gives
random loss (``numgen``) and duplication (``dup``), and TCP turns loss into delays and
reordering, and a token bucket (``tc tbf``) on a node's link makes a congested one whose
delays grow with the load. Needs root (CI runs as root) and the ``nft``, ``ip`` and ``tc``
commands (.ci/run installs Debian's nftables and iproute2).

Every fault is a rule in the *receiving* node's input chain or the sending node's output
chain, so "a cannot hear b" and "b cannot hear a" are separate, and one direction can be lost
alone, as Jepsen's nemeses do with iptables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TABLE = "catga_faults"
_networks_made = 0


def available() -> str | None:
    """Why this machine cannot run the harness, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"no {tool!r} command (apt-get install iproute2 nftables; .ci/run does)"
    return None


def run(*command: str, input_text: str | None = None) -> str:
    done = subprocess.run(command, input=input_text, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    name: str
    """The node's name (node0, node1...)."""
    namespace: str
    address: str

    def exec_prefix(self) -> list[str]:
        """What to put before a command to run it on this host."""
        return ["ip", "netns", "exec", self.namespace]


class Network:
    """``size`` hosts 10.<subnet>.0.1.. on a bridge whose own address (.254) is the clients'.

    Names carry a tag made of the pid so that two runs on one machine never collide; interface
    names stay under Linux's 15 characters."""

    def __init__(self, names: Sequence[str], subnet: int | None = None) -> None:
        global _networks_made
        _networks_made += 1
        tag = f"{os.getpid() % 100000}n{_networks_made % 1000}"
        self.subnet = subnet if subnet is not None else 100 + (os.getpid() + _networks_made) % 100
        self.bridge = f"cfbr{tag}"
        self.client_address = f"10.{self.subnet}.0.254"
        self.hosts = {
            name: Host(name, f"catga-{tag}-{k}", f"10.{self.subnet}.0.{k + 1}")
            for k, name in enumerate(names)
        }
        self._veths = {name: f"cf{tag}v{k}" for k, name in enumerate(names)}
        self._up = False
        self._congested: set[str] = set()

    # -- life cycle ---------------------------------------------------------------------------

    def up(self) -> None:
        self._up = True
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.client_address}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for name, host in self.hosts.items():
            veth = self._veths[name]
            run("ip", "netns", "add", host.namespace)
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns",
                host.namespace)  # fmt: skip
            run("ip", "link", "set", veth, "master", self.bridge, "up")
            run("ip", "-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
            run("ip", "-n", host.namespace, "link", "set", "eth0", "up")
            run("ip", "-n", host.namespace, "link", "set", "lo", "up")
            self._nft(host, self._table())

    def down(self) -> None:
        """Remove every namespace (their veth ends go with them) and the bridge. Idempotent."""
        if not self._up:
            return
        self._up = False
        for veth in self._veths.values():  # else the kernel frees them whenever it likes
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        for host in self.hosts.values():
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def __enter__(self) -> Network:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- faults -------------------------------------------------------------------------------

    def heal(self) -> None:
        """Every link whole again."""
        for host in self.hosts.values():
            self._nft(host, f"flush chain ip {TABLE} input\nflush chain ip {TABLE} output\n")
        for name in self._congested:
            run(*self.hosts[name].exec_prefix(), "tc", "qdisc", "del", "dev", "eth0", "root")
        self._congested.clear()

    def cut(self, source: str, destination: str) -> None:
        """``destination`` no longer hears ``source`` (one direction)."""
        src = self.hosts[source].address
        self._nft(self.hosts[destination], f"add rule ip {TABLE} input ip saddr {src} drop\n")

    def cut_both(self, a: str, b: str) -> None:
        self.cut(a, b)
        self.cut(b, a)

    def partition(self, *groups: Iterable[str]) -> None:
        """Each group hears only itself (a node in no group hears everyone: it bridges)."""
        sides = [set(group) for group in groups]
        for k, side in enumerate(sides):
            for other in sides[k + 1 :]:
                for a in side:
                    for b in other:
                        self.cut_both(a, b)

    def isolate(self, name: str) -> None:
        self.partition([name], [n for n in self.hosts if n != name])

    def lossy(self, name: str, percent: int) -> None:
        """Drop ``percent`` of the packets ``name`` sends to the other nodes, at random."""
        self._nft(self.hosts[name], self._to_peers(name, f"numgen random mod 100 < {percent} drop"))

    def duplicating(self, name: str) -> None:
        """Send every packet ``name`` sends to another node twice."""
        for other, host in self.hosts.items():
            if other != name:
                rule = f"add rule ip {TABLE} output ip daddr {host.address} dup to {host.address}\n"
                self._nft(self.hosts[name], rule)

    def congested(self, name: str, rate: str = "64kbit", latency: str = "1s") -> None:
        """Everything ``name`` sends leaves at ``rate`` through a token bucket that queues up
        to ``latency`` before it drops: delays that grow with the load, and messages on
        different connections overtaking one another (netem's delay is not in this kernel;
        tbf is). The clients' answers queue too."""
        run(*self.hosts[name].exec_prefix(), "tc", "qdisc", "replace", "dev", "eth0", "root",
            "tbf", "rate", rate, "burst", "4kb", "latency", latency)  # fmt: skip
        self._congested.add(name)

    # -- helpers ------------------------------------------------------------------------------

    def _to_peers(self, name: str, action: str) -> str:
        peers = ", ".join(h.address for n, h in self.hosts.items() if n != name)
        return f"add rule ip {TABLE} output ip daddr {{ {peers} }} {action}\n"

    @staticmethod
    def _table() -> str:
        return (
            f"table ip {TABLE} {{\n"
            "  chain input { type filter hook input priority 0; policy accept; }\n"
            "  chain output { type filter hook output priority 0; policy accept; }\n"
            "}\n"
        )

    @staticmethod
    def _nft(host: Host, script: str) -> None:
        run(*host.exec_prefix(), "nft", "-f", "-", input_text=script)
