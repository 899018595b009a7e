"""Ray's overhead against a local run on the same machine (``initlab bench --ray``).

A cluster of this machine's cores as Ray's tests build one (``ray.cluster_utils.Cluster``): a
head that runs no task and one worker node of one CPU per core. Measured in one run: the cluster's
start and a driver's connection, a task's round trip (the first one starts a worker process),
tasks per second, the object store's put and a task's read of Fashion-MNIST's training inputs,
and studies trained locally and on the cluster, with each stack's node and seconds.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict

from initlab.params.paths import Paths
from initlab.params.schema import Params

STUDIES = ("heart_rate", "saturation")  # dispatch-bound tiny models; GEMM-bound 256-wide layers


def _noop(x=None):
    return 0


def _nbytes(x) -> int:
    return int(x.nbytes)


def measure_ray(params: Params, paths: Paths, studies=STUDIES, progress=print) -> dict:
    """The figures of ``bench.json``'s ``ray`` section (seconds unless named otherwise)."""
    import ray
    from ray.cluster_utils import Cluster

    from initlab.core.io import read_npz
    from initlab.training.cluster import RayEngine, worker_env
    from initlab.training.study import train_study

    workers = os.cpu_count() or 1
    out: dict = {"nodes": f"head (0 CPUs) + {workers} worker nodes of 1 CPU, this machine"}
    progress(f"Ray: starting a local cluster of {workers} worker nodes ...")
    t0 = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(workers):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out["cluster_start_s"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        ray.init(address=cluster.address, runtime_env={"env_vars": worker_env()}, logging_level="ERROR")
        out["connect_s"] = time.perf_counter() - t0
        noop = ray.remote(num_cpus=1)(_noop)
        t0 = time.perf_counter()
        ray.get(noop.remote())
        out["first_task_s"] = time.perf_counter() - t0  # starts a worker process
        ray.get([noop.remote() for _ in range(2 * workers)])  # every node's worker warm
        trips = []
        for _ in range(50):
            t0 = time.perf_counter()
            ray.get(noop.remote())
            trips.append(time.perf_counter() - t0)
        out["task_round_trip_ms"] = 1e3 * statistics.median(trips)
        t0 = time.perf_counter()
        ray.get([noop.remote() for _ in range(500)])
        out["tasks_per_s"] = 500 / (time.perf_counter() - t0)
        x = read_npz(paths.prepared("fashion_mnist"))["x_train"]
        progress(f"Ray: the object store, {x.nbytes / 2**20:.0f} MiB of Fashion-MNIST inputs ...")
        t0 = time.perf_counter()
        ref = ray.put(x)
        out["put_s"] = time.perf_counter() - t0
        nbytes = ray.remote(num_cpus=1)(_nbytes)
        t0 = time.perf_counter()
        ray.get(nbytes.remote(ref))
        out["task_read_s"] = time.perf_counter() - t0  # on one machine: shared memory, no copy
        out["object_mib"] = x.nbytes / 2**20
        del ref
        ray.shutdown()
        out["studies"] = {}
        for study in studies:
            progress(f"Ray: {study} trained locally, then on the cluster ...")
            t0 = time.perf_counter()
            train_study(params, study, paths, show_progress=False)
            local = time.perf_counter() - t0
            engine = RayEngine(cluster.address)
            t0 = time.perf_counter()
            train_study(params, study, paths, show_progress=False, engine=engine)
            remote = time.perf_counter() - t0
            per_node: dict[str, float] = defaultdict(float)
            for s in engine.stacks:
                per_node[s["node"]] += s["seconds"]
            out["studies"][study] = {
                "local_s": local,
                "ray_s": remote,
                "ray_vs_local": remote / local,
                "stacks": sorted(engine.stacks, key=lambda s: s["stack"]),
                "busy_s_per_node": dict(per_node),
                "task_seconds": sum(s["seconds"] for s in engine.stacks),
            }
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    return out


def bench_ray(params: Params, paths: Paths, out, progress=print) -> list[str]:
    """``initlab bench --ray``: measure, update ``out``'s ``ray`` section (keeping the rest), and
    return the printed lines."""
    from initlab.core.io import read_json, write_json
    from initlab.errors import ParamsError

    for need in [paths.prepared("fashion_mnist"), *(paths.norm_stats(s) for s in STUDIES)]:
        if not need.exists():
            studies = " ".join(f"normalize@{s}" for s in ("fashion_mnist", *STUDIES))
            raise ParamsError(f"{need} missing; run `dvc repro {studies}` first")
    result = read_json(out) if out.exists() else {}
    result["ray"] = measure_ray(params, paths, progress=progress)
    write_json(out, result)
    return ray_lines(result)


def ray_lines(r: dict) -> list[str]:
    """The ``ray`` section as the lines ``initlab bench`` prints (and docs/cluster.md quotes)."""
    if "ray" not in r:
        return []
    g = r["ray"]
    lines = [
        f"Ray on this machine ({g['nodes']}):",
        f"  cluster start {g['cluster_start_s']:.1f} s, driver connect {g['connect_s']:.1f} s, "
        f"first task {g['first_task_s']:.2f} s (starts a worker)",
        f"  task round trip {g['task_round_trip_ms']:.1f} ms, {g['tasks_per_s']:.0f} tasks/s",
        f"  object store: put {g['object_mib']:.0f} MiB in {g['put_s']:.2f} s, "
        f"a task reads it in {g['task_read_s']:.2f} s",
    ]
    for study, s in g["studies"].items():
        nodes = ", ".join(f"{v:.1f}" for v in s["busy_s_per_node"].values())
        lines.append(
            f"  {study}: local {s['local_s']:.1f} s, Ray {s['ray_s']:.1f} s ({s['ray_vs_local']:.2f}x); "
            f"{len(s['stacks'])} stacks, busy s per node: {nodes}"
        )
    return lines
