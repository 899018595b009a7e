"""A study's stacks as Ray tasks on a cluster, with the same bytes as a local run.

``initlab train <study>`` uses it when ``INITLAB_RAY_ADDRESS`` (or ``--ray``) names a cluster:
``host:port`` of its head, or ``auto`` for one started on this machine with ``ray start``. The
stage is a Ray driver, the pattern of DVC's own Ray tutorial: it puts the prepared data into the
object store once, runs one task per stack, collects what they return and writes the stage's
outputs itself, atomically, as a local run does. Ray is imported only on this path.

A task is a pure function (``train_task``): one stack in; its weights, curves, final numbers and
diagnostics out as arrays, with the platform it ran on. It writes no file and makes no MLflow
call, because Ray may run it twice (a node that dies has its tasks retried elsewhere). Its bits
equal a local run's on the same platform: the stack seeds its own generators, runs on one
intra-op thread as ``run_stacks`` does, and the kernel pins reach the worker through
``runtime_env`` env vars (set inside a task they would come too late: numpy and torch are loaded
by then). Tasks that ran on different platforms fail the stage, unless mixing is allowed
(``--allow-mixed-platforms``), which ``platform.json`` then records.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from initlab.errors import ClusterError
from initlab.training.loop import Result
from initlab.training.stacks import Stack

ADDRESS_VARIABLE = "INITLAB_RAY_ADDRESS"
MIXED_VARIABLE = "INITLAB_RAY_ALLOW_MIXED"  # =1: the same as --allow-mixed-platforms
CONNECT_TIMEOUT_S = 10.0  # an unreachable head fails after at most this
MAX_RETRIES = 3  # a task whose worker or node died runs again, up to this many times
GPUS_PER_TASK = 1  # with device cuda, each task asks Ray for this many GPUs


@dataclass
class RayEngine:
    """Where and how a study's stacks run on Ray (not a DVC param: it changes no result)."""

    address: str
    allow_mixed: bool = False
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    max_retries: int = MAX_RETRIES
    on_stack: Callable[[int, int], None] | None = None  # (stacks done, total) after each one
    platform: dict | None = None  # after a run: the platform its tasks ran on (platform.json)
    stacks: list[dict] = field(default_factory=list)  # after a run: each stack's node and seconds


def worker_env() -> dict[str, str]:
    """The env vars every worker process starts with: initlab's kernel pins as this process has
    them, and one thread per task (a stack's bits follow its intra-op thread count)."""
    from initlab import NATIVE_SWITCH, PINNED_KERNELS

    env = {name: os.environ[name] for name in (*PINNED_KERNELS, NATIVE_SWITCH) if name in os.environ}
    return {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def head_address(address: str) -> str:
    """``host:port`` of the cluster's head: ``auto`` resolved as ``ray start`` left it."""
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            found = None
        if not found:
            raise ClusterError(
                f"{ADDRESS_VARIABLE}=auto: no Ray cluster was started on this machine; "
                "run `ray start --head` (or `make cluster`), or name the head as host:port"
            )
        return found
    return address.removeprefix("ray://")


def check_reachable(address: str, timeout_s: float) -> None:
    """Fail in one line, within ``timeout_s``, when nothing listens at the head's address."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not host:port or auto (e.g. 10.0.0.5:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(
            f"Ray cluster at {address} is unreachable ({exc.strerror or exc}); start it with "
            f"`ray start --head` there, or unset {ADDRESS_VARIABLE} to train on this machine"
        ) from None


def connect(engine: RayEngine, device: str) -> None:
    """Join the cluster as its driver, with the kernel pins in every worker's environment."""
    import ray
    from ray.exceptions import RayError

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # its retries are not the user's one line
    address = head_address(engine.address)
    check_reachable(address, engine.connect_timeout_s)
    if ray.is_initialized():
        ray.shutdown()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(
            address=engine.address if engine.address.startswith("ray://") else address,
            runtime_env={"env_vars": worker_env()},
            log_to_driver=False,
            logging_level="ERROR",
        )
    except (ConnectionError, RayError) as exc:  # a refused token among them
        reason = str(exc).strip().splitlines()[0][:200]
        raise ClusterError(
            f"could not join the Ray cluster at {address}: {reason}. A cluster with token "
            "authentication (Ray's default) needs RAY_AUTH_MODE=token and its token (~/.ray/auth_token "
            "or RAY_AUTH_TOKEN) here too: docs/cluster.md"
        ) from None
    for s, h in handlers.items():  # Ray's own SIGTERM handler would exit without cancelling tasks
        if h is not None and threading.current_thread() is threading.main_thread():
            signal.signal(s, h)
    if device.startswith("cuda") and ray.cluster_resources().get("GPU", 0) < GPUS_PER_TASK:
        ray.shutdown()
        raise ClusterError(
            f"device {device!r}: the Ray cluster at {address} has no GPU; start its nodes with "
            "`ray start --num-gpus N`, or train with device: cpu"
        )


def train_task(st, group, inits, keys: list[str], n_classes: int, device: str, *arrays: np.ndarray) -> dict:
    """One stack, trained as ``run_stacks`` trains it locally; returns arrays, writes nothing.
    ``arrays`` are the stack's inputs (named by ``keys``), read from the object store."""
    import ray

    from initlab.core.machine import platform_key
    from initlab.training.loop import train_group
    from initlab.training.stacks import keep_freed_memory

    torch.set_num_threads(1)
    keep_freed_memory()
    with warnings.catch_warnings():  # the object store's arrays are read-only; training never writes inputs
        warnings.simplefilter("ignore", UserWarning)
        tensors = {k: torch.from_numpy(v) for k, v in zip(keys, arrays, strict=True)}
    t0 = time.perf_counter()
    results = train_group(st, group, inits, tensors, n_classes, "cuda" if device.startswith("cuda") else device)
    return {
        "seconds": time.perf_counter() - t0,
        "node": f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}",
        "platform": platform_key(),
        "results": [pack(r) for r in results],
    }


def pack(r: Result) -> dict:
    """A result as plain arrays (no module): what a task returns."""
    state = {k: v.detach().cpu().numpy() for k, v in r.module.state_dict().items()}
    return {
        "variant": r.variant,
        "state": state,
        "arch": r.arch,
        "step_loss": r.step_loss,
        "val_loss": r.val_loss,
        "val_acc": r.val_acc,
        "final": r.final,
        "diagnostics": r.diagnostics,
    }


def unpack(d: dict, seconds: float) -> Result:
    """A packed result back as a ``Result`` whose module holds the returned weights."""
    from initlab.nets.models import build_module

    module = build_module(**d["arch"])
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in d["state"].items()})
    return Result(
        d["variant"],
        module,
        d["arch"],
        d["step_loss"],
        d["val_loss"],
        d["val_acc"],
        d["final"],
        seconds,
        d["diagnostics"],
    )


def platforms_agree(seen: dict[str, dict], engine: RayEngine) -> dict:
    """The platform the stage records: the one every task ran on, or, when mixing is allowed, each
    node's. Different platforms without that switch fail naming the nodes and what differs."""
    distinct = {tuple(sorted(p.items())) for p in seen.values()}
    first = next(iter(seen.values()))
    if len(distinct) == 1:
        return first
    if engine.allow_mixed:
        return {"mixed": True, "allowed_by": "--allow-mixed-platforms", "nodes": seen}
    nodes = list(seen)
    a, b = seen[nodes[0]], next(p for p in seen.values() if p != seen[nodes[0]])
    other = next(n for n in nodes if seen[n] == b)
    diff = ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
    raise ClusterError(
        f"stacks ran on different platforms: node {nodes[0]} and node {other} differ in {diff}; "
        "their bits would differ. Run on one kind of node, or pass --allow-mixed-platforms "
        f"({MIXED_VARIABLE}=1) to accept it (recorded in platform.json)"
    )


def run_on_ray(
    engine: RayEngine,
    stacks: list[Stack],
    st,
    inits,
    n_classes: int,
    device: str,
    on_done: Callable[[int, Stack], None] | None = None,
) -> tuple[list[list[Result]], dict]:
    """Train every stack as a Ray task; returns each stack's results, in order, and the platform
    they ran on. ``on_done(k, stack)`` follows each finished stack (progress). A task that raises
    fails the stage in one line naming its stack; Ctrl-C or SIGTERM cancels every task."""
    import ray

    connect(engine, device)
    pending: dict = {}
    try:
        options = {"num_cpus": 1, "max_retries": engine.max_retries, "retry_exceptions": False}
        if device.startswith("cuda"):
            options["num_gpus"] = GPUS_PER_TASK
        task = ray.remote(**options)(train_task)
        refs: dict[int, ray.ObjectRef] = {}  # each input tensor into the object store once
        for k in sorted(range(len(stacks)), key=lambda k: -stacks[k].cost):  # longest first
            s = stacks[k]
            for t in s.data.values():
                if id(t) not in refs:
                    refs[id(t)] = ray.put(t.cpu().numpy())
            arrays = [refs[id(t)] for t in s.data.values()]  # top-level refs: Ray resolves them
            ref = task.remote(st, s.group, inits, list(s.data), n_classes, device, *arrays)
            pending[ref] = k
        return _collect(engine, stacks, pending, on_done)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        ray.shutdown()


def _collect(engine, stacks, pending, on_done):
    import ray
    from ray.exceptions import RayError, RayTaskError

    out: list = [None] * len(stacks)
    seen: dict[str, dict] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        k = pending.pop(ref)
        try:
            got = ray.get(ref)
        except RayError as exc:  # the task raised, or its worker died more often than it is retried
            if isinstance(exc, RayTaskError):
                last = str(exc.cause if exc.cause is not None else exc).strip().splitlines()[-1]
            else:
                last = (
                    f"{type(exc).__name__} after {engine.max_retries} retries: {str(exc).strip().splitlines()[0]}"
                )
            g = stacks[k].group
            raise ClusterError(
                f"stack {k + 1} of {len(stacks)} ({len(g)} models, {g[0].run_name} .. {g[-1].run_name}) "
                f"failed on the cluster: {last}"
            ) from None
        seconds = got["seconds"] / len(stacks[k].group)  # as a local run: the stack's time per model
        engine.stacks.append(
            {"stack": k, "models": len(stacks[k].group), "node": got["node"], "seconds": got["seconds"]}
        )
        seen.setdefault(got["node"], got["platform"])
        if len({tuple(sorted(p.items())) for p in seen.values()}) > 1 and not engine.allow_mixed:
            platforms_agree(seen, engine)  # raises: the stage stops now, not after every stack
        out[k] = [unpack(d, seconds) for d in got["results"]]
        if on_done is not None:
            on_done(k, stacks[k])
        if engine.on_stack is not None:
            engine.on_stack(len(stacks) - len(pending), len(stacks))
    return out, platforms_agree(seen, engine)
