"""Did this run reproduce the committed results? Exact on the same platform, a test elsewhere.

Each study's evaluate stage writes ``pipeline/metrics/<study>_runs.json`` (committed to git): the
platform key its models were trained on (``initlab.core.machine``), every run's test accuracy by
variant and seed, and each variant's verdict. ``compare`` sets a new record beside a reference:

- **identical**: every test accuracy equal (any platform);
- **regression** on the reference's platform: any accuracy moved, since there the bytes must match;
- elsewhere a variant's runs are a new draw of the same seeds through other float roundings, so
  each variant is tested against its own seed spread: Welch's two-sample t-test on its test
  accuracies (on a study-wide pooled spread where a side has one seed), Fisher's exact test on its
  count of diverged seeds, the p-values Holm-corrected over every variant that moved, and a
  **regression** where a corrected p < ``ALPHA`` (a family-wise false-alarm rate of ``ALPHA``
  per verification when the platforms differ only in rounding). Otherwise **within bound**.

Verdicts that moved (a variant ``worse`` here, ``indistinguishable`` there) are listed either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

ALPHA = 0.01


@dataclass
class Move:
    """One variant whose accuracies differ between the reference and this run."""

    study: str
    variant: str
    n: tuple[int, int]  # seeds with an accuracy: reference, this run
    mean: tuple[float, float]
    spread: float  # the reference's 95 % interval half-width (t), NaN below two seeds
    p: float  # raw; ``p_holm`` after correction over every move
    p_holm: float = float("nan")

    @property
    def delta(self) -> float:
        return self.mean[1] - self.mean[0]


@dataclass
class Comparison:
    same_platform: bool
    moves: list[Move] = field(default_factory=list)
    verdicts_moved: list[tuple[str, str, str, str]] = field(default_factory=list)  # study, variant, ref, now
    missing: list[str] = field(default_factory=list)  # variants in one record and not the other

    @property
    def regressions(self) -> list[Move]:
        if self.same_platform:
            return list(self.moves)
        return [m for m in self.moves if m.p_holm < ALPHA]

    @property
    def status(self) -> str:
        if self.missing or self.regressions:
            return "regression"
        return "identical" if not self.moves else "within bound"


def record(df, platform: dict) -> dict:
    """The committed record of one study's evaluation: ``platform``, then per variant its test
    accuracy by seed (None where the run diverged) and its verdict."""
    from initlab.results.evaluate import variant_stats

    acc: dict[str, dict[str, float | None]] = {}
    for r in df.sort_values(["variant", "seed"]).itertuples(index=False):
        a = float(r.test_accuracy)
        acc.setdefault(r.variant, {})[str(r.seed)] = None if math.isnan(a) else round(a, 6)
    verdicts = dict(zip(*variant_stats(df)[["variant", "verdict"]].to_numpy().T))
    return {"platform": platform, "test_accuracy": acc, "verdict": dict(sorted(verdicts.items()))}


def _values(runs: dict[str, float | None]) -> tuple[np.ndarray, int]:
    finite = np.array([v for v in runs.values() if v is not None], dtype=float)
    return finite, len(runs) - len(finite)


def _pooled_sd(acc: dict[str, dict[str, float | None]]) -> tuple[float, int]:
    """The study's within-variant standard deviation, pooled over variants with two seeds or more."""
    ss, dof = 0.0, 0
    for runs in acc.values():
        v, _ = _values(runs)
        if len(v) > 1:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
    return (math.sqrt(ss / dof), dof) if dof else (float("nan"), 0)


def _half_width(v: np.ndarray) -> float:
    from scipy import stats

    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def variant_p(ref: dict[str, float | None], new: dict[str, float | None], pooled: tuple[float, int]) -> float:
    """Two-sided p-value that ``new``'s runs come from the same distribution as ``ref``'s: the
    smaller of Welch's t-test on the finite accuracies and Fisher's exact test on the diverged
    counts, times two (Bonferroni over the pair)."""
    from scipy import stats

    a, da = _values(ref)
    b, db = _values(new)
    ps = []
    if da != db:
        ps.append(float(stats.fisher_exact([[da, len(a)], [db, len(b)]]).pvalue))
    if len(a) and len(b):
        if len(a) > 1 and len(b) > 1 and (a.std() > 0 or b.std() > 0):
            ps.append(float(stats.ttest_ind(a, b, equal_var=False).pvalue))
        elif len(a) > 1 and len(b) > 1:  # no spread on either side: any move is real
            ps.append(1.0 if a.mean() == b.mean() else 0.0)
        else:  # one seed on a side: the study's pooled spread stands in for the variant's own
            sd, dof = pooled
            if not dof or sd == 0:
                ps.append(1.0 if a.mean() == b.mean() else 0.0)
            else:
                t = (b.mean() - a.mean()) / (sd * math.sqrt(1 / len(a) + 1 / len(b)))
                ps.append(float(2 * stats.t.sf(abs(t), dof)))
    elif len(a) != len(b):
        ps.append(0.0)
    return min(1.0, 2 * min(ps)) if len(ps) == 2 else (ps[0] if ps else 1.0)


def compare(reference: dict[str, dict], current: dict[str, dict]) -> Comparison:
    """``current`` against ``reference``, both ``{study: record}``."""
    from initlab.results.stats import holm

    same = all(reference[s]["platform"] == current[s]["platform"] for s in reference if s in current)
    out = Comparison(same_platform=same)
    for study in sorted(set(reference) | set(current)):
        if study not in reference or study not in current:
            out.missing.append(f"study {study}")
            continue
        ref, cur = reference[study], current[study]
        pooled = _pooled_sd(ref["test_accuracy"])
        for variant in sorted(set(ref["test_accuracy"]) | set(cur["test_accuracy"])):
            if variant not in ref["test_accuracy"] or variant not in cur["test_accuracy"]:
                out.missing.append(f"{study}: {variant}")
                continue
            a, b = ref["test_accuracy"][variant], cur["test_accuracy"][variant]
            if a == b:
                continue
            va, vb = _values(a)[0], _values(b)[0]
            mean = (float(va.mean()) if len(va) else float("nan"), float(vb.mean()) if len(vb) else float("nan"))
            out.moves.append(
                Move(study, variant, (len(va), len(vb)), mean, _half_width(va), variant_p(a, b, pooled))
            )
        for variant, was in ref.get("verdict", {}).items():
            now = cur.get("verdict", {}).get(variant)
            if now is not None and now != was:
                out.verdicts_moved.append((study, variant, was, now))
    for m, p in zip(out.moves, holm([m.p for m in out.moves])):
        m.p_holm = p
    return out


def summary(c: Comparison, reference_platform: dict, current_platform: dict) -> list[str]:
    """What ``initlab verify`` prints: the verdict first, then its evidence."""
    from initlab.core.machine import describe

    lines = []
    if c.status == "identical":
        lines.append("identical: every test accuracy equals the committed one")
    elif c.status == "within bound":
        worst = max(c.moves, key=lambda m: abs(m.delta) if math.isfinite(m.delta) else 0.0)
        rel = max(c.moves, key=lambda m: abs(m.delta) / m.spread if m.spread > 0 else 0.0)
        lines.append(
            f"within bound: {len(c.moves)} variants moved, none beyond its seed spread "
            f"(Welch t-test per variant, Holm over {len(c.moves)}, family-wise alpha {ALPHA}); smallest "
            f"corrected p {min(m.p_holm for m in c.moves):.2g}"
        )
        lines.append(
            f"largest move: {worst.study}/{worst.variant} {worst.delta:+.4f} (committed 95 % half-width "
            f"{worst.spread:.4f})"
            + (
                f"; against its interval: {rel.study}/{rel.variant} {rel.delta:+.4f} = "
                f"{abs(rel.delta) / rel.spread:.2f} half-widths"
                if rel.spread > 0
                else ""
            )
        )
    else:
        why = (
            "on the committed results' own platform, where the bytes must match"
            if c.same_platform
            else f"corrected p < {ALPHA}"
        )
        lines.append(f"regression: {len(c.regressions) + len(c.missing)} variants moved ({why})")
        lines += [f"  missing: {m}" for m in c.missing]
        for m in sorted(c.regressions, key=lambda m: m.p_holm):
            lines.append(
                f"  {m.study}/{m.variant}: {m.mean[0]:.4f} -> {m.mean[1]:.4f} ({m.delta:+.4f}; "
                f"committed 95 % half-width {m.spread:.4f}; corrected p {m.p_holm:.2g})"
            )
    lines.append(
        ("platform: the committed one, " if c.same_platform else "platform: ") + describe(current_platform)
    )
    if not c.same_platform:
        lines.append(f"committed on: {describe(reference_platform)}")
    if c.verdicts_moved:
        lines.append(f"verdicts moved ({len(c.verdicts_moved)}):")
        lines += [f"  {s}/{v}: {was} -> {now}" for s, v, was, now in c.verdicts_moved]
    return lines


def committed_records(studies: list[str], paths, rev: str) -> dict[str, dict]:
    """Each study's record as committed at git revision ``rev``."""
    import json
    import subprocess

    from initlab.errors import DataError

    out = {}
    for study in studies:
        rel = paths.runs_record(study).relative_to(paths.root).as_posix()
        try:
            p = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=paths.root, capture_output=True, text=True)
        except OSError as exc:
            raise DataError(f"cannot run git ({exc}); verify reads the committed results from git") from None
        if p.returncode != 0:
            why = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "no output"
            raise DataError(
                f"no committed {rel} at {rev} ({why}); allowed: a revision that has it, "
                "e.g. --against HEAD in a clone of the project"
            )
        out[study] = json.loads(p.stdout)
    return out


def current_records(studies: list[str], paths) -> dict[str, dict]:
    """Each study's record as this clone's last `dvc repro` wrote it."""
    from initlab.core.io import read_json
    from initlab.errors import DataError

    out = {}
    for study in studies:
        path = paths.runs_record(study)
        if not path.exists():
            raise DataError(f"{path} missing; run `dvc repro evaluate@{study}` (or `make repro`) first")
        out[study] = read_json(path)
    return out


def verify(studies: list[str], paths, against: str) -> tuple[Comparison, list[str]]:
    """This clone's records of ``studies`` against those committed at git revision ``against``:
    the comparison and its summary lines (the platforms: the first study's)."""
    reference = committed_records(studies, paths, against)
    current = current_records(studies, paths)
    c = compare(reference, current)
    first = studies[0]
    return c, summary(c, reference[first]["platform"], current[first]["platform"])
