"""Training on a Ray cluster: the same bytes as a local run, faults, and a local path free of Ray.

The cluster tests (slow) start a multi-node cluster on this machine, as Ray's own tests do: a head
with no CPUs, so every task runs on one of two worker nodes of one CPU each.
"""

from __future__ import annotations

import filecmp
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from initlab.errors import ClusterError

REPO = Path(__file__).resolve().parents[1]


def narrowed(params, study, **update):
    sp = params.studies[study]
    sp = sp.model_copy(update={"train": sp.train.model_copy(update=update)})
    return params.model_copy(update={"studies": {**params.studies, study: sp}})


def test_the_local_path_never_imports_ray(small_root):
    script = (
        "import sys; from pathlib import Path; from initlab.params.load import load_params; "
        "from initlab.params.paths import Paths; from initlab.training.study import train_study; "
        "from initlab.training.save import save_results; import initlab.cli; "
        f"p = load_params(Path({str(REPO / 'params.yaml')!r})); "
        f"r = train_study(p, 'line', Paths(Path({str(small_root.root)!r})), show_progress=False); "
        "assert len(r) > 0; print('ray' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "INITLAB_RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_an_unreachable_cluster_fails_fast_in_one_line():
    from initlab.training.cluster import RayEngine, connect

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(ClusterError, match=rf"Ray cluster at 127.0.0.1:{port} is unreachable"):
        connect(RayEngine(f"127.0.0.1:{port}", connect_timeout_s=2), "cpu")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ClusterError, match="not host:port or auto"):
        connect(RayEngine("nowhere"), "cpu")


def test_different_platforms_are_refused_naming_the_nodes_unless_allowed():
    from initlab.training.cluster import RayEngine, platforms_agree

    a = {"cpu_vendor": "AuthenticAMD", "mkl_cbwr": "unset"}
    b = {"cpu_vendor": "GenuineIntel", "mkl_cbwr": "unset"}
    assert platforms_agree({"10.0.0.1": a, "10.0.0.2": dict(a)}, RayEngine("auto")) == a
    with pytest.raises(ClusterError, match=r"node 10.0.0.1 and node 10.0.0.2 differ in cpu_vendor 'AuthenticAMD'"):
        platforms_agree({"10.0.0.1": a, "10.0.0.2": b}, RayEngine("auto"))
    mixed = platforms_agree({"10.0.0.1": a, "10.0.0.2": b}, RayEngine("auto", allow_mixed=True))
    assert mixed["mixed"] is True and mixed["nodes"]["10.0.0.2"] == b


def test_workers_get_the_kernel_pins_and_one_thread(monkeypatch):
    from initlab import PINNED_KERNELS
    from initlab.training.cluster import worker_env

    env = worker_env()
    assert {k: env[k] for k in PINNED_KERNELS} == {k: os.environ[k] for k in PINNED_KERNELS}
    assert env["OMP_NUM_THREADS"] == "1"


# --- on a local multi-node cluster ------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, nodes
    c.shutdown()


def trained(params, study, paths, out: Path, engine=None) -> Path:
    from initlab.training.save import save_results
    from initlab.training.study import train_study

    results = train_study(params, study, paths, show_progress=False, engine=engine)
    save_results(results, out, engine.platform if engine else None)
    return out


def assert_same_bytes(a: Path, b: Path) -> None:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors, mismatch + errors


@pytest.mark.slow
def test_a_study_trained_on_the_cluster_has_the_bytes_of_a_local_run(cluster, params, small_root, tmp_path):
    from initlab.training.cluster import RayEngine

    c, _ = cluster
    done = []
    local = trained(params, "circles", small_root, tmp_path / "local")
    remote = trained(
        params, "circles", small_root, tmp_path / "ray", RayEngine(c.address, on_stack=lambda d, t: done.append(d))
    )
    assert_same_bytes(local, remote)
    assert len(done) > 1  # it ran as several tasks


@pytest.mark.slow
def test_a_node_removed_mid_stage_still_gives_the_same_bytes(params, small_root, tmp_path):
    from ray.cluster_utils import Cluster

    from initlab.training.cluster import RayEngine

    p = narrowed(params, "heart_rate", epochs=2000)
    local = trained(p, "heart_rate", small_root, tmp_path / "local")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        nodes = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
        removed = []

        def replace_nodes(done, total):  # after the first stack: one node is still training the other
            if removed or done == total:
                return
            spare = c.add_node(num_cpus=1)
            for n in nodes:  # the busy one among them: its task dies and runs again on the spare
                c.remove_node(n)
            removed.append(spare)

        engine = RayEngine(c.address, on_stack=replace_nodes)
        remote = trained(p, "heart_rate", small_root, tmp_path / "ray", engine)
        assert removed  # a node died with a task on it; Ray ran the task again on the other
        assert_same_bytes(local, remote)
    finally:
        c.shutdown()


@pytest.mark.slow
def test_a_node_with_other_kernel_settings_is_refused(params, small_root, tmp_path):
    from ray.cluster_utils import Cluster

    from initlab.training.cluster import RayEngine

    p = narrowed(params, "circles", epochs=50)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        c.add_node(num_cpus=1)
        c.add_node(num_cpus=1, env_vars={"MKL_CBWR": "COMPATIBLE"})  # MKL's other bits
        c.wait_for_nodes()
        with pytest.raises(ClusterError, match=r"different platforms: node .* differ in mkl_cbwr"):
            trained(p, "circles", small_root, tmp_path / "refused", RayEngine(c.address))
        assert not (tmp_path / "refused" / "runs.csv").exists()
        allowed = trained(p, "circles", small_root, tmp_path / "mixed", RayEngine(c.address, allow_mixed=True))
        platform = json.loads((allowed / "platform.json").read_text())
        assert platform["mixed"] is True
        assert sorted(n["mkl_cbwr"] for n in platform["nodes"].values()) == ["COMPATIBLE", "unset"]
    finally:
        c.shutdown()


@pytest.mark.slow
def test_a_task_that_raises_names_its_stack_and_a_cuda_study_asks_for_gpus(params, small_root, tmp_path):
    """No real GPU here: the cluster advertises a fake one, so a task is scheduled with num_gpus and
    then fails on the worker (no CUDA), which must come back as one line naming the stack."""
    from ray.cluster_utils import Cluster

    from initlab.training.cluster import RayEngine
    from initlab.training.study import train_study

    p = narrowed(params, "circles", epochs=5)
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        with pytest.raises(ClusterError, match="has no GPU"):
            train_study(p, "circles", small_root, "cuda", show_progress=False, engine=RayEngine(c.address))
        c.add_node(num_cpus=1, num_gpus=1)
        c.wait_for_nodes()
        with pytest.raises(ClusterError, match=r"stack \d+ of \d+ \(\d+ models, .*\) failed on the cluster: .+"):
            train_study(p, "circles", small_root, "cuda", show_progress=False, engine=RayEngine(c.address))
    finally:
        c.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_stopped_driver_cancels_its_tasks_and_leaves_no_output(cluster, small_root, tmp_path, sig):
    """SIGTERM: the driver cancels every task and writes nothing. SIGKILL: nothing half-written
    remains, the cluster frees its workers (the job ends with its driver), and the next run
    starts over and completes."""
    import ray

    from test_processes import initlab, make_project, tiny_params

    c, _ = cluster
    params = tiny_params("circles", epochs=20000)
    root, env = make_project(tmp_path / "project", small_root, params)
    cmd = initlab("train", "circles", "--ray", c.address)
    proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    ray.init(address=c.address, logging_level="ERROR")
    try:
        deadline = time.monotonic() + 60
        while ray.available_resources().get("CPU", 0) >= 2:  # until a task runs
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        proc.send_signal(sig)
        rc = proc.wait(timeout=30)
        assert rc != 0
        if sig == signal.SIGTERM:
            assert "no output was written" in proc.stderr.read()
        assert not (root / "pipeline" / "train" / "circles").exists()
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0) < 2:  # its tasks are gone
            assert time.monotonic() < deadline, "the stopped driver's tasks still hold the cluster"
            time.sleep(0.2)
    finally:
        ray.shutdown()
    if sig == signal.SIGKILL:
        params["studies"]["circles"]["train"]["epochs"] = 100
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert (root / "pipeline" / "train" / "circles" / "runs.csv").exists()
