"""Hosts of their own for a test: network namespaces, each joined to the test's bridge by a
veth pair, so a test can cut one host off the network (``ip link set ... down``) without
killing anything.

Everything is named after the test process (``cfp<pid>...``) and lives in a /24 of
10.231.0.0/16 that no interface uses yet. Leftovers of a run that was killed before it
cleaned up (their pid is gone) are removed when the next one starts. Needs root and ``ip``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

PREFIX = "cfp"


def available() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no ip command (apt-get install iproute2)"
    return None


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class Host:
    name: str
    #: The network namespace the host's processes run in.
    netns: str
    #: The veth end on the bridge's side: down, the host is cut off.
    link: str
    address: str

    def command(self, *argv: str) -> tuple[str, ...]:
        """``argv`` run on this host."""
        return ("ip", "netns", "exec", self.netns, *argv)

    def cut(self) -> None:
        ip("link", "set", self.link, "down")

    def reconnect(self) -> None:
        ip("link", "set", self.link, "up")


class Network:
    """A bridge in this namespace at ``gateway`` (where the test's services listen), and a
    host per name behind it."""

    def __init__(self, names: list[str]) -> None:
        tag = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{tag}br"
        self.subnet = _free_subnet()
        self.gateway = f"{self.subnet}.1"
        self.hosts = {
            name: Host(name, f"{tag}-{name}", f"{tag}{name}"[:15], f"{self.subnet}.{i + 2}")
            for i, name in enumerate(names)
        }

    def create(self) -> Network:
        remove_leftovers()
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for host in self.hosts.values():
                ip("netns", "add", host.netns)
                # The peer is made inside the host at once: "eth0" is taken out here.
                ip(
                    "link",
                    "add",
                    host.link,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    host.netns,
                )
                ip("link", "set", host.link, "master", self.bridge, "up")
                ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
                ip("-n", host.netns, "link", "set", "eth0", "up")
                ip("-n", host.netns, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for host in self.hosts.values():
            ip("netns", "del", host.netns, check=False)  # its eth0, and so its veth pair, go
            ip("link", "del", host.link, check=False)
        ip("link", "del", self.bridge, check=False)


def remove_leftovers() -> None:
    """Remove the namespaces and links of earlier runs whose process is gone."""
    pattern = re.compile(rf"^{PREFIX}(\d+)")

    def dead(name: str) -> bool:
        found = pattern.match(name)
        return found is not None and not os.path.exists(f"/proc/{found.group(1)}")

    for line in ip("netns", "list").splitlines():
        if line.split() and dead(line.split()[0]):
            ip("netns", "del", line.split()[0], check=False)
    for line in ip("-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if dead(name):
            ip("link", "del", name, check=False)


def _free_subnet() -> str:
    """A 10.231.X prefix that no interface here has an address in."""
    used = set(re.findall(r"inet 10\.231\.(\d+)\.", ip("-o", "-4", "addr", "show")))
    start = os.getpid() % 200
    for offset in range(250):
        third = (start + offset) % 250 + 1
        if str(third) not in used:
            return f"10.231.{third}"
    raise RuntimeError("no free 10.231.X.0/24 subnet")
