"""Where the MLflow store is: the project's root (also from a DVC experiment's temporary
workspace), the tracking URI and where a new experiment keeps its artifacts."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def project_root(cwd: Path | None = None) -> Path:
    """The project's root: the working directory, or, inside the workspace DVC makes for a queued
    or temporary experiment (``<project>/.dvc/tmp/exps/<tmp>/``, deleted when it ends), the
    project it was made from, so that its runs land in the project's store, not in the workspace."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(1, len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the project's ``mlflow.db`` (``sqlite:///mlflow.db`` in its root)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = project_root()
    return DEFAULT_TRACKING_URI if root == Path.cwd().resolve() else f"sqlite:///{root / 'mlflow.db'}"


def artifact_location(experiment: str) -> str | None:
    """Where a new experiment keeps its runs' artifacts: MLflow's default (``./mlruns``) in the
    project, ``<project>/mlruns/<experiment>`` from a DVC experiment's temporary workspace."""
    root = project_root()
    if os.environ.get("MLFLOW_TRACKING_URI") or root == Path.cwd().resolve():
        return None
    return f"{(root / 'mlruns').as_uri()}/{experiment}"
