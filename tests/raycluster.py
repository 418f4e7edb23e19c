"""A real Ray cluster on this machine, bound to 127.0.0.1 only, for tests and benchmarks.

Each node is started with ``ray start``. Ray resolves 127.0.0.1 to the machine's outward address
on Linux (ray-project/ray#26293) and then listens on every interface; with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` it keeps 127.0.0.1 (and binds there only) but refuses a
second node, so the second node's ``ray start`` runs with that one refusal lifted (the CLI's own
check, nothing else). Every process of the cluster carries a marker in its environment: a node
is killed by its marker, the whole cluster at the end, and a watchdog kills it after a time limit
or when the process that started it is gone, so the cluster always stops by itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # the driver needs it too, to reach 127.0.0.1
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_initial_delay_ms": "1000"}

_START = """
import sys, types
import ray._private.ray_constants as rc
import ray.scripts.scripts as scripts
cli = types.ModuleType("ray_constants_cli")
cli.__dict__.update(rc.__dict__)
cli.ENABLE_RAY_CLUSTER = True  # only the CLI's multi-node refusal; addresses stay on 127.0.0.1
scripts.ray_constants = cli
sys.argv = ["ray", "start"] + sys.argv[1:]
sys.exit(scripts.main())
"""

_WATCHDOG = """
import os, signal, sys, time
marker, parent, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
end = time.time() + limit
while time.time() < end:
    try:
        os.kill(parent, 0)
    except OSError:
        break
    time.sleep(1)
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            if marker.encode() in open(f"/proc/{pid}/environ", "rb").read():
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
"""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked(marker: str) -> list[int]:
    """The pids whose environment carries ``marker``."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                    out.append(int(pid))
            except OSError:
                continue
    return out


def listening_outside_loopback(pids: list[int]) -> list[str]:
    """TCP listening sockets of ``pids`` on an address other than 127.0.0.1 (from /proc/net/tcp*)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    bad = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                addr = f[1].split(":")[0]
                if addr not in ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"):
                    bad.append(f"{table} {f[1]}")
    return bad


class LocalCluster:
    """A head and more nodes on 127.0.0.1, each its own ``ray start``."""

    def __init__(self, limit_s: float = 1200, object_store_mb: int = 400) -> None:
        self.marker = f"YOLOQ_TEST_CLUSTER_{uuid.uuid4().hex[:12]}"
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.store_bytes = object_store_mb * 1024 * 1024
        self.nodes: dict[str, str] = {}  # name -> the node's own marker
        subprocess.Popen([sys.executable, "-c", _WATCHDOG, self.marker, str(os.getpid()), str(limit_s)],
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def env(self) -> dict[str, str]:
        """The environment a driver of this cluster runs with."""
        return dict(os.environ, **LOOPBACK_ENV)

    def start(self, name: str, cpus: int = 1, resources: dict[str, float] | None = None) -> None:
        """Start one node (the first is the head)."""
        node_marker = f"{self.marker}_{name}"
        env = dict(os.environ, **LOOPBACK_ENV, **FAST_HEALTH, **{self.marker: "1", node_marker: "1"})
        args = ["--node-ip-address=127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0", "--disable-usage-stats",
                f"--object-store-memory={self.store_bytes}"]
        if resources:
            import json

            args.append(f"--resources={json.dumps(resources)}")
        if not self.nodes:
            args += ["--head", f"--port={self.port}", "--include-dashboard=false"]
        else:
            args += [f"--address={self.address}"]
        proc = subprocess.run([sys.executable, "-c", _START, *args], env=env, capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start ({name}) failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        self.nodes[name] = node_marker

    def kill(self, name: str) -> int:
        """Kill every process of node ``name`` at once (a machine losing power); returns how many."""
        pids = [p for p in marked(self.nodes[name]) if p != os.getpid()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        return len(pids)

    def busy(self, name: str, prefixes: tuple[str, ...]) -> list[str]:
        """The tasks node ``name`` is running now: Ray titles a worker ``ray::<function>`` while it runs one."""
        out = []
        for pid in marked(self.nodes[name]):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            if title.startswith(prefixes):
                out.append(title)
        return out

    def pids(self) -> list[int]:
        """Every process of the cluster."""
        return [p for p in marked(self.marker) if p != os.getpid()]

    def stop(self) -> None:
        """Kill the whole cluster and wait until its processes are gone."""
        for _ in range(20):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.5)
