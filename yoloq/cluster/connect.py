"""The driver's handle on a Ray cluster: connect, submit a task where it must run, wait, and say why not.

Ray is an optional extra (``pip install -e ".[ray]"``): it is imported here only, when ``--ray`` is given.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable

from yoloq.errors import YoloqError

RETRIES = 2  # Ray re-runs a task whose node or worker process died this many times, on any node that fits
POLL_S = 5.0  # how often a wait checks that a pending target still has a node


def _resolve(address: str) -> str:
    """``auto``: ``$RAY_ADDRESS``, else the cluster ``ray start`` last began on this machine (as Ray finds it)."""
    if address != "auto":
        return address
    found = os.environ.get("RAY_ADDRESS", "")
    if not found:
        try:
            found = (Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster").read_text().strip()
        except OSError:
            found = ""
    if not found:
        raise YoloqError("--ray without an address: no Ray cluster was started on this machine; start one with "
                         "'ray start --head', or give the head's address (--ray HOST:PORT)")
    return found


def _reachable(address: str) -> None:
    """Fail at once when nothing listens at ``host:port`` (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise YoloqError(f"no Ray cluster at '{address}' ({e.strerror or e}); start one with 'ray start --head' "
                         f"and give its address (host:port)") from None


class Cluster:
    """A connected Ray cluster (the driver's view)."""

    def __init__(self, ray: Any, address: str) -> None:
        self._ray, self.address = ray, address
        self.here = ray.get_runtime_context().get_node_id()  # the node the driver runs on
        self._remotes: dict[Callable[..., Any], Any] = {}

    @classmethod
    def connect(cls, address: str) -> Cluster:
        """Join the cluster at ``address`` as its driver.

        Raises:
            YoloqError: When Ray is not installed or the cluster cannot be reached.
        """
        try:
            import ray
        except ImportError:
            raise YoloqError("--ray needs Ray, an optional extra: pip install -e \".[ray]\" (on every node too)") \
                from None
        address = _resolve(address)
        _reachable(address)
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, namespace="yoloq")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise YoloqError(f"no Ray cluster at '{address}' ({str(e).splitlines()[0][:200]}); start one with "
                             f"'ray start --head' and give its address (host:port)") from None
        return cls(ray, address)

    def close(self) -> None:
        """Leave the cluster (it keeps running)."""
        self._ray.shutdown()

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's live nodes as Ray lists them."""
        return [n for n in self._ray.nodes() if n.get("Alive")]

    def describe(self) -> str:
        """The live nodes in one line: address, CPUs, GPUs and custom resources."""
        parts = []
        for n in self.nodes():
            res = n.get("Resources", {})
            custom = [k for k in res if k not in ("CPU", "GPU", "memory", "object_store_memory")
                      and not k.startswith("node:") and not k.startswith("accelerator_type")]
            gpus = f", {res['GPU']:g} GPU" if res.get("GPU") else ""
            parts.append(f"{n['NodeManagerAddress']} {res.get('CPU', 0):g} CPU{gpus}"
                         f"{' [' + ', '.join(custom) + ']' if custom else ''}")
        return f"{len(parts)} nodes ({'; '.join(parts)})"

    def has_resource(self, name: str) -> bool:
        """Whether a live node joined with the custom resource ``name``."""
        return any(n.get("Resources", {}).get(name, 0) > 0 for n in self.nodes())

    def no_target_reason(self, target: str) -> str:
        """Why a target's variants cannot be timed: no live node has its resource."""
        return (f"target '{target}': no node of the Ray cluster at {self.address} has the resource '{target}'; "
                f"join one with: ray start --address=HEAD:PORT --resources='{{\"{target}\": 1}}'")

    def put(self, obj: Any) -> Any:
        """Put ``obj`` in the object store once; tasks given the reference read it on their node."""
        return self._ray.put(obj)

    def submit(self, fn: Callable[..., Any], *args: Any, gpu: bool = False, target: str | None = None,
               here: bool = False) -> Any:
        """Run ``fn(*args)`` as a task: on a node with a GPU, with resource ``target``, or on the driver's node."""
        ray = self._ray
        if fn not in self._remotes:
            self._remotes[fn] = ray.remote(fn)
        opts: dict[str, Any] = {"num_cpus": 1, "max_retries": RETRIES, "retry_exceptions": False}
        if gpu:
            opts["num_gpus"] = 1
        if target:
            opts["resources"] = {target: 1}
        if here:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=self.here, soft=False)
        return self._remotes[fn].options(**opts).remote(*args)

    def cancel(self, ref: Any) -> None:
        """Stop a task whose result is no longer needed."""
        try:
            self._ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - it may have finished or its node may be gone
            pass

    def next_done(self, pending: dict[Any, Any], target: str | None = None) -> tuple[Any, dict[str, Any]]:
        """Wait for the next finished task of ``pending``; a task Ray gave up on comes back as a failure.

        With ``target``, a wait whose target has no live node any more ends as a failure too (Ray
        would keep such a task pending until a node with the resource joins).
        """
        ray = self._ray
        while True:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            if ready:
                ref = ready[0]
                try:
                    return ref, ray.get(ref)
                except ray.exceptions.RayError as e:
                    first = (str(e).strip().splitlines() or [""])[0][:300]
                    return ref, {"status": "failed", "reason": f"{type(e).__name__} after {RETRIES} retries: {first}"}
            if target and not self.has_resource(target):
                ref = next(iter(pending))
                self.cancel(ref)
                return ref, {"status": "failed", "reason": f"{self.no_target_reason(target)} (its node left mid-run)"}
