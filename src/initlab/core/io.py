"""Atomic writes and checksums (a stage's output appears whole or not at all), and the readers of
stage outputs, whose errors name the broken file and the stage that writes it."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from initlab.errors import DataError
from initlab.params.paths import Paths


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one that is not ours may still be)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (file or folder); rename it onto ``path`` on success.

    On any exception, KeyboardInterrupt included, the temporary is removed and ``path`` is left
    as it was, so an interrupted stage never leaves a half-written output behind.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed process
            pid = old.name.removeprefix(f".{path.name}.").split(".")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
        target = tmp / path.name
        yield target
        if path.is_dir() and not path.is_symlink():
            # Moved aside whole, then replaced: a folder that cannot be moved (immutable, read-only)
            # fails here with nothing deleted, and the old one is put back if the new cannot go in.
            old = tmp / f"{path.name}.old"
            os.replace(path, old)
            try:
                os.replace(target, path)
            except BaseException:
                os.replace(old, path)
                raise
        else:
            os.replace(target, path)
    except DataError as exc:  # a refused write inside (a file of this folder): named by its real path
        if tmp is not None and str(exc).startswith(str(tmp / path.name)):
            raise DataError(str(path) + str(exc)[len(str(tmp / path.name)) :]) from exc
        raise
    except (OSError, RuntimeError) as exc:
        if (refused := write_refused(exc, path, tmp)) is not None:
            raise refused from exc
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def check_writable(path: Path) -> None:
    """Refuse now, not after hours of training, an output ``atomic_path`` could not put in place:
    its folder takes no new file, or the old output cannot be moved (read-only, immutable)."""
    path = Path(path)
    folder = next(p for p in [path.parent, *path.parent.parents] if p.exists())  # made later, not now
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder))
    except OSError as exc:
        raise (write_refused(exc, path) or exc) from None
    if path.exists() and not os.access(path, os.W_OK):
        raise DataError(
            f"{path}: cannot write: the OS says it is not writable (read-only, immutable or "
            "another user's); make it writable"
        )


# What the OS says, in words a user acts on.
_ERRNO_FIX = {
    errno.ENOSPC: "the disk is full; free some space",
    errno.EDQUOT: "the disk quota is used up; free some space",
    errno.EFBIG: "the file is larger than allowed (the disk, or `ulimit -f`); free space or raise the limit",
    errno.EROFS: "the file system is read-only; write elsewhere or remount it",
    errno.EACCES: "no permission to write there; make it writable",
    errno.EPERM: "the OS refused the change (an immutable file or folder? `lsattr`, `chattr -i`); "
    "make it writable",
}


def _in_torch_save(exc: BaseException) -> bool:
    """Whether ``exc`` came out of ``torch.save``, whose file writer turns the OS's refusal into a
    RuntimeError of its own words ("iostream error", "unexpected pos"): its frames say so."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        in_torch = Path(code.co_filename).parts[-2:] == ("torch", "serialization.py")
        if in_torch and code.co_name in ("save", "_save"):
            return True
        tb = tb.tb_next
    return False


def write_refused(exc: BaseException, path: Path, tmp: Path | None = None) -> DataError | None:
    """One line for a write the OS refused while writing ``path`` (through ``tmp``, its temporary):
    the path (``path``'s own, not the temporary's) and what the OS said; None for another error.
    torch's file writer reports a refused write as a RuntimeError without the OS's reason: the
    free space is said instead."""
    if isinstance(exc, OSError) and exc.errno in _ERRNO_FIX:
        where = str(exc.filename or path)
        if tmp is not None and where.startswith(str(tmp)):
            where = str(path) + where[len(str(tmp / path.name)) :]
        elif Path(where).name.startswith(f".{path.name}.") and where.endswith(".tmp"):  # making the temporary
            where = str(path)
        said = exc.strerror or type(exc).__name__
        return DataError(f"{where}: cannot write: {said} (errno {exc.errno}); {_ERRNO_FIX[exc.errno]}")
    if isinstance(exc, RuntimeError) and _in_torch_save(exc):
        free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
        return DataError(
            f"{path}: cannot write: the OS refused a write ({free:,} bytes free on its disk; "
            "a full disk or `ulimit -f`); free some space or raise the limit"
        )
    return None


# The stage that writes each per-study output, by the ``Paths`` method that names it.
PRODUCERS = {
    "raw": "download",
    "prepared": "prepare",
    "norm_stats": "normalize",
    "trained": "train",
    "evaluated": "evaluate",
    "variants": "evaluate",
    "curves": "evaluate",
    "layers": "evaluate",
    "metrics": "evaluate",
}
_STUDY = "\0study\0"  # a study name no path holds


def producer(path: Path) -> tuple[str, str] | None:
    """``(stage, study)`` of the stage that writes ``path`` (or a file inside it), found by matching
    it against the ``Paths`` of each per-study output: ``pipeline/evaluate/line_variants.csv`` is
    evaluate's of line, not of "line_variants"; None off pipeline/."""
    parts = Path(path).parts
    if "pipeline" not in parts:
        return None
    rel = Path(*parts[parts.index("pipeline") :]).as_posix()
    outs = [(getattr(Paths(Path()), method)(_STUDY), stage) for method, stage in PRODUCERS.items()]
    outs.append((Paths(Path()).prepared(_STUDY).with_suffix(".json"), "prepare"))  # its summary, beside it
    # The most specific first: <study>_variants.csv before <study>.csv.
    for out, stage in sorted(outs, key=lambda o: -len(o[0].as_posix())):
        pattern = re.escape(out.as_posix()).replace(re.escape(_STUDY), "([a-z][a-z0-9_]*)")
        if m := re.fullmatch(pattern + "(/.*)?", rel):
            return stage, m.group(1)
    return None


def _fix(path: Path) -> str:
    """ "; run `dvc repro -f prepare@line`" for pipeline/prepared/line.npz; "" off pipeline/."""
    found = producer(path)
    return f"; run `dvc repro -f {found[0]}@{found[1]}`" if found else ""


def unreadable(path: Path, exc: BaseException) -> DataError:
    """One line naming a stage input that is missing or broken, and the stage that writes it."""
    said = (str(exc).strip().splitlines() or [""])[0][:300]  # torch's weights_only refusal is a page
    why = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({type(exc).__name__}: {said})"
    return DataError(f"{path}: {why}{_fix(path)}")


def _check_study(path: Path, found: Any, study: str | None) -> None:
    """A stage input of another study (a file copied over, a folder renamed) is refused."""
    if study is not None and str(found) != study:
        raise DataError(f"{path}: holds study {str(found)!r}, not {study!r}{_fix(path)}")


def read_npz(path: Path, keys: tuple[str, ...] = (), study: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by a stage; ``keys`` must be among them, and its
    ``study`` array must be ``study`` when given."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise unreadable(path, exc) from None
    missing = [k for k in (*keys, *(("study",) if study else ())) if k not in out]
    if missing:
        raise DataError(f"{path}: no array {', '.join(missing)}{_fix(path)}")
    _check_study(path, out.get("study"), study)
    return out


def read_csv(path: Path, columns: tuple[str, ...] = ()):
    """A table written by a stage (a pandas DataFrame); ``columns`` must be among its columns."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:  # pandas' parser and empty-data errors are ValueErrors
        raise unreadable(path, exc) from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)}{_fix(path)}")
    return df


def load_weights(path: Path) -> dict:
    """A model's state_dict, loaded with ``weights_only=True`` (no code runs from the file)."""
    import pickle

    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise unreadable(path, exc) from None


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: Path, study: str | None = None) -> Any:
    """A JSON stage output; its ``study`` key must be ``study`` when given."""
    try:
        out = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise unreadable(path, exc) from None
    if study is not None:
        _check_study(path, out.get("study") if isinstance(out, dict) else None, study)
    return out


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
