"""What each MLflow run shows, read and checked from the train and evaluate stages' outputs.

No MLflow here: ``initlab track`` reads every study's runs first, so a missing or stale input is
one line (a ``ParamsError`` naming the file and the stage to run) before any store is opened.
A variant is a parent run with its seeds' runs; each run's key (``initlab.run_key``) is a SHA-256
of what it shows, its parent's key and ``LOG_FORMAT``.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from initlab.errors import ParamsError
from initlab.params.paths import Paths
from initlab.params.schema import Params

LOG_FORMAT = 3  # part of every run key: a change to what a run logs logs every run again
# Columns of runs.csv / the evaluate table that say which model a row is; the others are metrics.
IDENTITY = ("run_name", "variant", "init", "loss", "normalize", "lr", "seed", "reproduce", "arch")


@dataclass(frozen=True)
class TrainedRun:
    """One trained model as the train and evaluate stages left it: everything its run logs."""

    run_name: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # final train/validation metrics and test metrics
    curves: dict[str, np.ndarray]  # step_loss, val_loss, val_acc
    layers: dict[str, np.ndarray]  # diagnostics: "<point>/<stat>" -> one value per layer
    arch: dict
    weights: Path
    key: str  # RUN_KEY_TAG: equal keys, equal runs
    seconds: float | None = None  # its training time, where the timings file has it


@dataclass(frozen=True)
class VariantRun:
    """A variant: the parent run of its seeds' runs, with the variants table's row."""

    name: str
    tags: dict[str, str]
    metrics: dict[str, float]  # mean, interval, p-value against the best
    key: str
    runs: list[TrainedRun]


def _flat(prefix: str, obj) -> dict[str, str]:
    if not isinstance(obj, dict):
        return {prefix: str(obj)[:6000]}
    return {k: v for key, val in obj.items() for k, v in _flat(f"{prefix}.{key}".lstrip("."), val).items()}


def _same_rows(a, b) -> bool:
    """Whether two tables hold the same rows in their shared columns (floats to 1e-12)."""
    from pandas.testing import assert_frame_equal

    shared = sorted((set(a.columns) & set(b.columns)) - {"arch"})
    try:
        assert_frame_equal(a[shared], b[shared], check_dtype=False, rtol=1e-12, atol=0)
    except AssertionError:
        return False
    return True


def _shapes(arch_json: str) -> dict[str, tuple]:
    """The state_dict shapes of a model of ``arch`` (``build_module``'s), built once per architecture."""
    if arch_json not in _SHAPES:
        from initlab.nets.models import build_module

        module = build_module(**json.loads(arch_json))
        _SHAPES[arch_json] = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    return _SHAPES[arch_json]


_SHAPES: dict[str, dict[str, tuple]] = {}


def check_weights(path: Path, blob: bytes, arch: dict) -> None:
    """``blob`` (the file ``path``) loads with ``weights_only`` (no code runs from it) as the
    state_dict of a model of ``arch``; else a ``DataError`` naming the file and the stage to re-run."""
    import io

    import torch

    from initlab.core.io import unreadable

    try:
        with warnings.catch_warnings():  # torch warns of a pickle protocol before refusing the file
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - whatever a broken or hostile file raises: it is unreadable
        # torch's own words are a page on its weights_only default; say what it means here.
        raise unreadable(
            path,
            ValueError(
                f"{type(exc).__name__}: no weights that load with weights_only=True: "
                "corrupt, or a pickle carrying code, which is never run"
            ),
        ) from None
    want = _shapes(json.dumps(arch, sort_keys=True))
    got = (
        {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
        if isinstance(state, dict)
        else None
    )
    if got is None or got != want or len(state) != len(want):
        raise unreadable(path, ValueError(f"not the state_dict of its model {arch['sizes']}"))


def run_key(weights: bytes, shown: list, curves: dict[str, np.ndarray]) -> str:
    """SHA-256 of what a run shows: a run with this key in the store needs no logging again."""
    h = hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode())
    h.update(hashlib.sha256(weights).digest())
    for name in sorted(curves):
        a = np.ascontiguousarray(curves[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode() + a.tobytes())
    return h.hexdigest()


def trained_runs(params: Params, study: str, paths: Paths) -> list[VariantRun]:
    """Read and check ``study``'s train and evaluate outputs; no MLflow here.

    A missing or stale input is a ``ParamsError`` naming the file and the stage to run, raised
    before any store is opened.
    """
    from initlab.core.io import read_csv, read_npz

    fix = f"run `dvc repro evaluate@{study}` first"
    folder, table = paths.trained(study), paths.evaluated(study)
    for need in (folder / "runs.csv", folder / "curves.npz", folder / "diagnostics.csv", table):
        if not need.exists():
            raise ParamsError(f"{need} missing; {fix}")
    runs = read_csv(folder / "runs.csv", ("run_name", "arch"))
    evaluated = read_csv(table, ("run_name", "init", "loss", "normalize", "lr", "seed", "reproduce", "diverged"))
    if not _same_rows(runs, evaluated):
        raise ParamsError(
            f"{table} does not match {folder / 'runs.csv'} (trained again since it was evaluated); {fix}"
        )
    curves = read_npz(folder / "curves.npz")
    diag = read_csv(folder / "diagnostics.csv", ("run_name", "point", "layer"))
    layers = {str(name): g for name, g in diag.groupby("run_name", sort=False)}
    timing = paths.timing(f"train-{study}")  # not an output (times differ run to run): no key part
    seconds = json.loads(timing.read_text()).get("run_seconds", {}) if timing.exists() else {}
    sp = params.study(study)
    common = _flat(
        "train", sp.train.model_dump(exclude={"inits", "losses", "normalize", "lr", "seeds", "reproduce"})
    )
    config = hashlib.sha256(
        json.dumps([sp.data.model_dump(), sp.split.model_dump(), common], sort_keys=True, default=str).encode()
    ).hexdigest()[:8]
    vt = read_csv(paths.variants(study), ("variant", "metric", "mean", "ci_low", "ci_high", "verdict"))
    by_variant: dict[str, list] = {}
    for row, arch_json in zip(evaluated.to_dict("records"), runs["arch"]):
        by_variant.setdefault(str(row["variant"]), []).append((row, arch_json))
    if set(by_variant) != set(vt["variant"]):
        raise ParamsError(f"{paths.variants(study)} does not match {table}; {fix}")
    out = []
    for v in vt.to_dict("records"):
        first = by_variant[v["variant"]][0][0]
        ident = {
            "init": str(first["init"]),
            "loss": first["loss"],
            "normalize": first["normalize"],
            "lr": f"{float(first['lr']):g}",
            "reproduce": str(bool(first["reproduce"])).lower(),
            **({"model": str(first["model"])} if "model" in first else {}),
        }
        tags = {
            "study": study,
            "variant": v["variant"],
            "config": config,
            "variant_config": f"{v['variant']}@{config}",
            **ident,
        }
        m = v["metric"]
        metrics = {
            f"{m}_mean": v["mean"],
            f"{m}_ci_low": v["ci_low"],
            f"{m}_ci_high": v["ci_high"],
            "p_vs_best": v["p_vs_best"],
            "seeds": v["n"],
            "diverged_seeds": v["diverged"],
            "test_accuracy_mean": v["test_mean"],
            "test_accuracy_ci_low": v["test_ci_low"],
            "test_accuracy_ci_high": v["test_ci_high"],
        }
        metrics = {k: float(x) for k, x in metrics.items() if isinstance(x, (int, float)) and math.isfinite(x)}
        pkey = run_key(
            b"",
            [
                LOG_FORMAT,
                study,
                v,
                tags,
                params.tracking.model_dump(),
                [r["run_name"] for r, _ in by_variant[v["variant"]]],
            ],
            {},
        )
        children = [
            _trained_run(
                params,
                study,
                sp,
                folder,
                curves,
                layers,
                row,
                arch_json,
                common,
                seconds,
                fix,
                {**tags, "verdict": v["verdict"]},
                pkey,
            )
            for row, arch_json in by_variant[v["variant"]]
        ]
        key = hashlib.sha256("".join([pkey, *(c.key for c in children)]).encode()).hexdigest()
        out.append(VariantRun(v["variant"], {**tags, "verdict": v["verdict"]}, metrics, key, children))
    return out


def _trained_run(
    params, study, sp, folder, curves, layers, row, arch_json, common, seconds, fix, variant_tags, parent_key
) -> TrainedRun:
    from initlab.nets.diagnostics import STATS

    name, init = str(row["run_name"]), str(row["init"])
    if name not in layers:
        raise ParamsError(f"{folder / 'diagnostics.csv'}: no rows of {name}; {fix}")
    mine_layers = {
        f"{point}/{stat}": g.sort_values("layer")[stat].to_numpy(dtype=np.float64)
        for point, g in layers[name].groupby("point", sort=False)
        for stat in STATS
    }
    weights = folder / "weights" / f"{name}.pt"
    mine = {k.split("/", 1)[1]: curves[k] for k in curves if k.startswith(f"{name}/")}
    if not weights.exists() or set(mine) != {"step_loss", "val_loss", "val_acc"}:
        raise ParamsError(
            f"{weights if not weights.exists() else folder / 'curves.npz'}: no weights or curves of {name}; {fix}"
        )
    if init not in sp.inits:
        raise ParamsError(
            f"{folder / 'runs.csv'}: init {init!r} of {name} is not in the study's "
            f"inits (trained with other params); {fix}"
        )
    arch = json.loads(arch_json)
    tags = {**variant_tags, "seed": str(row["seed"]), "diverged": str(bool(row["diverged"])).lower()}
    p = {
        **common,
        **{k: tags[k] for k in ("init", "loss", "normalize", "lr", "seed", "reproduce")},
        **_flat("init_spec", sp.inits[init].model_dump()),
        **_flat("arch", arch),
    }
    metrics = {
        k: float(v)
        for k, v in row.items()
        if k not in IDENTITY and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    shown = [study, name, row, tags, p, params.tracking.model_dump(), parent_key]
    blob = weights.read_bytes()
    check_weights(weights, blob, arch)  # before any store is opened: a broken one changes nothing there
    key = run_key(blob, shown, {**mine, **{f"layers/{k}": v for k, v in mine_layers.items()}})
    secs = seconds.get(name)
    secs = secs if isinstance(secs, float) and math.isfinite(secs) else None
    if secs is not None:
        metrics["train_seconds"] = secs
    return TrainedRun(name, tags, p, metrics, mine, mine_layers, arch, weights, key, secs)
