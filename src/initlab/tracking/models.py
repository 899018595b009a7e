"""Each run's model in MLflow's pytorch format (``pt2``, no pickle), traced once per
architecture, and put where the run keeps its artifacts."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from initlab.tracking.runs import TrainedRun


class ModelWriter:
    """Saves each run's model in MLflow's pytorch format as ``pt2``: a traced graph, no pickle.

    ``mlflow.pytorch.save_model`` traces the model with ``torch.export`` each time, most of a
    run's cost. Models of one architecture share their graph, so it is traced once per
    architecture (a template, saved by MLflow), and each run's model is the template with the
    run's weights put into the traced program and saved with ``torch.export.save``, and a new
    ``model_uuid``. ``mlflow.pytorch.load_model`` loads it as it loads the template (a test
    compares their outputs).
    """

    def __init__(self, scratch: Path) -> None:
        import torch

        self.scratch, self.templates = scratch, {}
        self.requirements = [f"torch=={torch.__version__.split('+')[0]}"]

    def save(self, r: TrainedRun, path: Path) -> None:
        import shutil
        import uuid
        from datetime import UTC, datetime

        import torch
        from mlflow.models import Model

        from initlab.core.io import load_weights

        weights = load_weights(r.weights)
        template, program = self._template(r.arch, weights)
        shutil.copytree(template, path)
        with torch.no_grad():
            for name, value in weights.items():
                program.state_dict[name].copy_(value)
        torch.export.save(program, path / "data" / "model.pt2")
        model = Model.load(path)
        model.model_uuid, model.utc_time_created = uuid.uuid4().hex, str(datetime.now(UTC).replace(tzinfo=None))
        model.save(path / "MLmodel")

    def _template(self, arch: dict, weights: dict):
        import mlflow.pytorch
        import torch
        from mlflow.models.signature import ModelSignature
        from mlflow.types.schema import Schema, TensorSpec

        from initlab.nets.models import build_module

        shape = json.dumps(arch, sort_keys=True)
        if shape not in self.templates:
            module = build_module(**arch)
            module.load_state_dict(weights)
            n_in, n_out = arch["sizes"][0], arch["sizes"][-1]
            sig = ModelSignature(*(Schema([TensorSpec(np.dtype(np.float32), (-1, n))]) for n in (n_in, n_out)))
            path = self.scratch / f"template-{len(self.templates)}"
            mlflow.pytorch.save_model(
                module.eval(),
                path,
                serialization_format="pt2",
                pip_requirements=self.requirements,
                input_example=torch.zeros(2, n_in).numpy(),
                signature=sig,
            )
            self.templates[shape] = (path, torch.export.load(path / "data" / "model.pt2"))
        return self.templates[shape]


def save_model(cl, info, r: TrainedRun, models: ModelWriter) -> None:
    """``r``'s model as the run's ``model`` artifact: written in place where the run's artifacts
    are a local folder (the default; copying it there cost a tenth of ``track``), else saved
    aside and uploaded with ``log_artifacts``."""
    from urllib.parse import unquote, urlparse

    uri = urlparse(info.artifact_uri)
    if uri.scheme in ("", "file") and uri.netloc in ("", "localhost"):
        models.save(r, Path(unquote(uri.path)) / "model")
        return
    with tempfile.TemporaryDirectory(prefix="initlab-model-") as tmp:
        models.save(r, Path(tmp) / "model")
        cl.log_artifacts(info.run_id, f"{tmp}/model", "model")
