"""``initlab <stage>``: one command per DVC stage, each a thin wrapper over a plain function."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path

import typer

from initlab.errors import ClusterError, DataError, ParamsError, StoreError
from initlab.params.load import load_params
from initlab.params.paths import Paths

app = typer.Typer(
    help="initlab: how weight initialisation, loss and input normalisation decide whether a "
    "network trains. Each command is one DVC stage; run them all with `dvc repro`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


ParamsOpt = typer.Option(Path("params.yaml"), "--params", help="The params file to read.")
StudyArg = typer.Argument(..., show_default=False, help="A study: a key of studies: in params.yaml.")


# Libraries that log (tracebacks included) on their own: quiet unless --verbose, so that an error
# is the one line `stage` prints. MLflow sets its logger's level when imported, from this variable.
LIBRARY_LOGGERS = ("mlflow", "sqlalchemy", "alembic", "urllib3", "git")
_verbose = False


VerboseOpt = typer.Option(
    False,
    "--verbose",
    "-v",
    help="Show the libraries' own logs (MLflow, SQLAlchemy) and an error's full traceback.",
)


@app.callback()
def options(verbose: bool = VerboseOpt) -> None:
    """initlab: one command per DVC stage."""
    import logging
    import os
    import warnings

    global _verbose
    _verbose = verbose
    os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO" if verbose else "CRITICAL"
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.CRITICAL + 1)
    if not verbose:
        warnings.filterwarnings("ignore", module=r"(mlflow|sqlalchemy|alembic)(\.|$)")


def _fail(message: str, code: int) -> None:
    if _verbose:  # the cause, with its traceback, above the one line
        import traceback

        traceback.print_exc()
    typer.echo(f"initlab: error: {message}", err=True)
    raise typer.Exit(code)


def stage(fn):
    """Turn the package's known errors into one line and an exit code (2: bad params)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ParamsError as exc:
            _fail(str(exc), 2)
        except (DataError, StoreError, ClusterError) as exc:
            _fail(str(exc), 1)
        except OSError as exc:  # a write the OS refused outside a stage output (read-only, full disk)
            from initlab.core.io import write_refused

            refused = write_refused(exc, Path(exc.filename or "."))
            if refused is None:
                raise
            _fail(str(refused), 1)
        except KeyboardInterrupt:
            typer.echo("initlab: interrupted; no output was written", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _done(what: str, t0: float) -> None:
    typer.echo(f"{what} ({time.perf_counter() - t0:.1f} s)", err=True)


@app.command()
@stage
def download(study: str = StudyArg, params: Path = ParamsOpt) -> None:
    """Fetch (or generate) a study's raw data into pipeline/raw/<study>, SHA-256 verified.

    Reads the folder INITLAB_DATA_MIRROR names instead of the network when it is set.
    """
    from initlab.data.raw import download as run

    t0 = time.perf_counter()
    p = load_params(params)
    out = run(study, p.study(study), Paths())
    _done(f"download {study}: {out}", t0)


@app.command()
@stage
def prepare(study: str = StudyArg, params: Path = ParamsOpt) -> None:
    """Split a study's raw data into seeded, stratified train / validation / test."""
    from initlab.data.prepare import prepare as run

    t0 = time.perf_counter()
    p = load_params(params)
    sp = p.study(study)
    try:
        s = run(study, sp, Paths())
    except ParamsError as exc:  # a value that does not fit the data (heart-rate threshold)
        raise ParamsError(f"{params}: {exc}") from None
    _done(f"prepare {study}: {s['sizes']}", t0)


@app.command()
@stage
def normalize(study: str = StudyArg, params: Path = ParamsOpt) -> None:
    """Normalisation statistics (scale, z-score mean/std) from the training split only."""
    from initlab.data.splits import normalize_stats

    t0 = time.perf_counter()
    load_params(params).study(study)
    s = normalize_stats(study, Paths())
    _done(f"normalize {study}: statistics of {s['n_fit']} training rows", t0)


@app.command()
@stage
def train(
    study: str = StudyArg,
    params: Path = ParamsOpt,
    device: str = typer.Option(None, help="cpu or cuda; default: device in params."),
    ray: str = typer.Option(
        None,
        "--ray",
        envvar="INITLAB_RAY_ADDRESS",
        show_envvar=True,
        help="Train the stacks as tasks on this Ray cluster: host:port of its head, or auto (started "
        "here with `ray start --head`). Same bytes as a local run; not a DVC param. Default: local.",
    ),
    allow_mixed: bool = typer.Option(
        False,
        "--allow-mixed-platforms",
        envvar="INITLAB_RAY_ALLOW_MIXED",
        help="With --ray: accept tasks that ran on nodes of different platforms (other bits); "
        "platform.json records each node's.",
    ),
) -> None:
    """Train every variant (init x loss x normalisation x lr x seed) of a study.

    Writes weights, curves and a runs table to pipeline/train/<study>; no MLflow here (`initlab
    track` logs the runs). With --ray (docs/cluster.md) a Ray cluster trains, this process writes.
    """
    from initlab.training.checks import check_device
    from initlab.training.study import train_to_disk

    p = load_params(params)
    p.study(study)
    dev = check_device(device, "--device") if device else check_device(p.device, f"device: in {params}")
    engine = None
    if ray:  # Ray is imported only on this path
        from initlab.training.cluster import RayEngine

        engine = RayEngine(ray.strip(), allow_mixed)
    models, seconds = train_to_disk(p, study, Paths(), dev, engine)
    typer.echo(f"trained {models} models in {seconds:.1f} s -> {Paths().trained(study)}", err=True)


@app.command()
@stage
def evaluate(study: str = StudyArg, params: Path = ParamsOpt) -> None:
    """Test every trained model of a study on its held-out test split; write DVC metrics."""
    from initlab.results.evaluate import evaluate_study, write_evaluation

    t0 = time.perf_counter()
    load_params(params).study(study)
    paths = Paths()
    df = evaluate_study(study, paths)
    write_evaluation(study, df, paths)
    _done(f"evaluate {study}: {len(df)} runs -> {paths.metrics(study)}", t0)


TrackStudies = typer.Argument(
    None, show_default=False, help="Studies to log (default: every study in params, as the DVC stage does)."
)


@app.command()
@stage
def track(studies: list[str] | None = TrackStudies, params: Path = ParamsOpt) -> None:
    """Log every trained model to MLflow: one run per model in experiment initlab-<study>.

    A run holds the model's tags and params, its training loss and validation curves (strided to
    tracking.max_points_per_metric points), its final train/validation metrics and its test
    metrics (from pipeline/evaluate/<study>.csv), and the model itself (MLflow pytorch format,
    `runs:/<run_id>/model`, when tracking.log_models). The store is sqlite:///mlflow.db unless
    MLFLOW_TRACKING_URI names another.

    Idempotent: each run is tagged initlab.run_key, a hash of the weights, the curves and the
    run's metrics and params; a model whose key is already in a FINISHED run is skipped, so a
    second run logs nothing and a change to one study logs only its changed models. Every input
    (weights loaded with weights_only) is checked before the store is opened. After a track that
    failed or was interrupted, the next logs only the runs missing: a part-logged variant is
    completed under its parent run, and its FAILED or KILLED leftovers are deleted (MLflow's soft
    delete; `mlflow gc` purges them). After deleting mlflow.db, `dvc repro -f -s track`
    logs everything again (-s: this stage only; -f alone also re-runs every stage before it).

    Writes pipeline/tracking.json (study -> run name -> run id) and, outside the stage's outputs,
    pipeline/timings/track.json: runs logged and skipped, and mlflow_seconds (this command's
    time, for `initlab bench`). Needs the train and evaluate stages done (`dvc repro
    evaluate@<study>`).
    """
    t0 = time.perf_counter()  # mlflow_seconds: the whole command but Python's start-up
    from initlab.tracking.stage import track_lines, track_studies

    p = load_params(params)
    out = track_studies(p, list(dict.fromkeys(studies)) if studies else list(p.studies), Paths(), t0)
    for line in track_lines(out):
        typer.echo(line, err=True)


WordsOpt = typer.Option(
    Path("report.yaml"), "--words", help="The report's words: each study's title, question and sources' figures."
)


@app.command()
@stage
def report(params: Path = ParamsOpt, words: Path = WordsOpt) -> None:
    """Render reports/report.md and its figures from every study's metrics."""
    from initlab.params.words import load_words
    from initlab.report.render import write_report

    t0 = time.perf_counter()
    p = load_params(params)
    out = write_report(p, load_words(words, list(p.studies)), Paths())
    _done(f"report: {out}", t0)


BenchOut = typer.Option(Path("reports/bench.json"), help="Where to write the figures (JSON).")
BenchPipeline = typer.Option(
    True,
    help="Also time a full `dvc repro` from clean in a temporary copy of the project, and a no-op one (minutes).",
)
BenchDevice = typer.Option("cpu", help="Device for initlab's trainer.")
BenchScaling = typer.Option(
    False,
    "--scaling",
    help="Also time initlab per model as the stack (1-64 "
    "models), the width (256, 1024) and the depth (3, 10, 30 layers) grow, with "
    "peak memory per model, each in a fresh process (about 2 minutes).",
)
BenchRay = typer.Option(
    False,
    "--ray",
    help="Only measure Ray's overhead against a local run, on a local cluster of this machine's cores "
    "(a few minutes; docs/cluster.md), and update the `ray` section of --out, keeping the rest.",
)
BenchRepeats = typer.Option(
    3,
    min=1,
    help="Time (a) and (b) this many times each, alternately; the fastest of each counts (all are in --out).",
)


@app.command()
@stage
def bench(
    params: Path = ParamsOpt,
    out: Path = BenchOut,
    pipeline: bool = BenchPipeline,
    device: str = BenchDevice,
    repeats: int = BenchRepeats,
    scaling: bool = BenchScaling,
    ray: bool = BenchRay,
) -> None:
    """Measure, in one run: seed 001's training loop per model, initlab's trainer per model on
    the same setup (with and without its per-layer diagnostics), the peers a PyTorch user would
    pick (a plain one-model loop, torch.func ensembling), the same for heart rate's tiny MLP, the
    machine's float32 GEMM rate, and what bounds each target (the trainer's matrix products alone
    and its fused Adam alone, the tiny step's ATen operators); optionally (--scaling) per-model
    time and memory against stack size, width and depth, and (--pipeline) the full and no-op
    `dvc repro` wall times, the full one's seconds by kind of stage with the machine's I/O stall,
    and MLflow's share of training time. Prints the ratios; writes them to --out.

    Needs the Fashion-MNIST stages done (`dvc repro prepare@fashion_mnist normalize@fashion_mnist`).
    """
    from initlab.bench.measure import run_bench
    from initlab.bench.summary import summary_lines
    from initlab.core.io import write_json
    from initlab.training.checks import check_device

    p = load_params(params)
    device = check_device(device, "--device")
    progress = lambda m: typer.echo(m, err=True)  # noqa: E731
    if ray:
        from initlab.bench.cluster import bench_ray

        for line in bench_ray(p, Paths(), out, progress):
            typer.echo(line)
        typer.echo(f"figures: {out}")
        return
    result = run_bench(p, Paths(), Path.cwd(), pipeline, device, progress, repeats, scaling)
    if out.exists():  # the figures of `--ray`, measured apart, stay
        from initlab.core.io import read_json

        result.update({k: v for k, v in read_json(out).items() if k == "ray"})
    write_json(out, result)
    for line in summary_lines(result):
        typer.echo(line)
    typer.echo(f"figures: {out}")


VerifyAgainst = typer.Option("HEAD", "--against", help="The git revision whose committed results to compare with.")


@app.command()
@stage
def verify(against: str = VerifyAgainst, params: Path = ParamsOpt) -> None:
    """Say whether this clone reproduced the committed results; run it after `dvc repro`.

    Compares every run's test accuracy (pipeline/metrics/<study>_runs.json) with the one committed
    at --against. On the platform the committed results came from they must be identical; on
    another (CPU vendor, MKL path, kernel switches: `initlab.core.machine`) each variant must stay
    within its own seed spread (Welch t-test, Holm over variants, family-wise alpha 0.01). Exit 0:
    identical or within bound; 1: a regression, with the variants that moved and by how much.
    """
    from initlab.results.verify import verify as run

    c, lines = run(list(load_params(params).studies), Paths(), against)
    for line in lines:
        typer.echo(line)
    if c.status == "regression":
        raise typer.Exit(1)


server_app = typer.Typer(
    help="A team's MLflow tracking server (basic-auth login) on a PostgreSQL store; "
    "`make server` / `make server-stop`.",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")
ServerRoot = typer.Option(
    Path(".server"), "--root", help="Its folder: PostgreSQL's cluster, the artifacts, the log (git-ignored)."
)
ServerPort = typer.Option(5001, "--port", min=1, max=65535, help="The MLflow server's port on 127.0.0.1.")
PgPort = typer.Option(
    54329,
    "--pg-port",
    min=1,
    max=65535,
    help="PostgreSQL's port (its socket's name; it listens on a Unix socket in --root only).",
)
ServerWait = typer.Option(120, min=1, help="Seconds to wait for the server's /health.")


@server_app.command("start")
@stage
def server_start(
    root: Path = ServerRoot, port: int = ServerPort, pg_port: int = PgPort, timeout: float = ServerWait
) -> None:
    """Start PostgreSQL and MLflow's server (basic-auth app, artifacts served) on 127.0.0.1.

    The login is MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD from the environment (the
    first start makes that user the admin). Then: MLFLOW_TRACKING_URI=http://127.0.0.1:<port>
    dvc repro (or `initlab track`, or `dvc repro -f -s track` when the pipeline is up to date).
    """
    from initlab.tracking.server import Server, start

    t0 = time.perf_counter()
    out = start(Server(root, port, pg_port), timeout)
    _done(
        f"server: MLflow on {out['uri']} (pid {out['pid']}), runs in PostgreSQL ({root}/postgres), "
        f"artifacts in {out['artifacts']}; use MLFLOW_TRACKING_URI={out['uri']}",
        t0,
    )


@server_app.command("stop")
@stage
def server_stop(
    root: Path = ServerRoot,
    port: int = ServerPort,
    pg_port: int = PgPort,
    postgres: bool = typer.Option(True, help="Also stop PostgreSQL."),
) -> None:
    """Stop MLflow's server and PostgreSQL (their data stay in --root)."""
    from initlab.tracking.server import Server, stop

    stopped = stop(Server(root, port, pg_port), postgres)
    typer.echo(f"server: stopped {', '.join(stopped)}" if stopped else "server: nothing was running", err=True)


def main() -> None:  # pragma: no cover
    sys.exit(app())
