"""Results do not depend on the machine's core count: 1, 2 and 4 threads give the same bytes."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys

import pytest
import yaml

from conftest import MIRROR, REPO

pytestmark = pytest.mark.slow  # three trainings of 28 models in child processes: about a minute


def _digests(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def heavy_root(tmp_path_factory):
    """Fashion-MNIST with 28 models in one group, heavy enough that training splits it into stacks."""
    root = tmp_path_factory.mktemp("threads")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    study = copy.deepcopy(raw["studies"]["fashion_mnist"])
    study["split"].update(train_subset=1000, test_subset=500)
    study["train"].update(epochs=1, seeds=[0], reproduce=None)
    (root / "params.yaml").write_text(yaml.safe_dump({**raw, "studies": {"fashion_mnist": study}}))
    env = {**os.environ, "INITLAB_DATA_MIRROR": str(MIRROR)}
    for stage in ("download", "prepare", "normalize"):
        subprocess.run(
            [sys.executable, "-m", "initlab", stage, "fashion_mnist"],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
        )
    return root, env


def test_training_and_evaluation_give_the_same_bytes_on_1_2_and_4_threads(heavy_root):
    from initlab.training.stacks import SPLIT_PARTS

    root, env = heavy_root
    seen = {}
    for threads in (1, 2, 4):
        run_env = {**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        for stage in ("train", "evaluate"):
            p = subprocess.run(
                [sys.executable, "-m", "initlab", stage, "fashion_mnist"],
                cwd=root,
                env=run_env,
                capture_output=True,
                text=True,
            )
            assert p.returncode == 0, p.stderr[-2000:]
        got = _digests(root / "pipeline" / "train" / "fashion_mnist")
        got.update({f"evaluate/{k}": v for k, v in _digests(root / "pipeline" / "evaluate").items()})
        seen[threads] = got
    assert len([k for k in seen[1] if k.startswith("weights/")]) == 28
    assert SPLIT_PARTS == 2  # so the 28 models trained as two stacks of 14, on every thread count
    for threads in (2, 4):
        moved = sorted(k for k in seen[1] if seen[threads].get(k) != seen[1][k])
        assert not moved, f"{threads} threads changed {len(moved)} files against 1 thread: {moved[:5]}"
