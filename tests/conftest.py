"""Shared fixtures: the offline data mirror and a project root in a temporary folder; a probe of
what a fresh process sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from initlab.params.load import load_params
from initlab.params.paths import Paths

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("INITLAB_DATA_MIRROR") or REPO.parent / "shared" / "data")


@pytest.fixture(autouse=True)
def _offline_mirror(monkeypatch, tmp_path):
    monkeypatch.setenv("INITLAB_DATA_MIRROR", str(MIRROR))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def params():
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def small_root(tmp_path_factory, params):
    """line, circles and heart_rate downloaded, prepared and normalised under a temporary root."""
    from initlab.data.prepare import prepare
    from initlab.data.raw import download
    from initlab.data.splits import normalize_stats

    os.environ.setdefault("INITLAB_DATA_MIRROR", str(MIRROR))
    paths = Paths(tmp_path_factory.mktemp("root"))
    for study in ("line", "circles", "heart_rate"):
        download(study, params.study(study), paths)
        prepare(study, params.study(study), paths)
        normalize_stats(study, paths)
    return paths


def fresh_process_json(code: str, unset: tuple[str, ...], **env: str) -> dict:
    """The JSON that ``code`` prints, run by a fresh Python with the package on its path, this
    process's environment less ``unset`` and plus ``env`` (what a new process decides at import)."""
    base = {k: v for k, v in os.environ.items() if k not in unset}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env, "PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)
