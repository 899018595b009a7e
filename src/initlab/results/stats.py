"""Intervals and verdicts: whether a variant's difference from a study's best is real.

Per variant, the mean over seeds of a metric and its 95 % confidence interval (Student t). Within
a study, variants that share seeds saw the same batches and dropout masks, so each is compared
with the best variant (highest mean) paired by seed: a paired t-test (``scipy.stats.ttest_rel``)
on the seeds both have, the p-values Holm-corrected across the study's comparisons. The verdict is
``best``, ``indistinguishable`` (corrected p >= ``ALPHA``) or ``worse``; ``diverged`` where every
seed diverged, ``—`` where fewer than two seeds pair up.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

ALPHA = 0.05
CONFIDENCE = 0.95
# A corrected p in [0.005, 0.1) is "marginal": another CPU's float roundings retrain every model
# along another path, and a variant's p over a few seeds then moves by up to ten times (README,
# "Reproducing"), so a "worse" needs p < ALPHA / 10 to hold elsewhere. The report marks such verdicts.
MARGINAL = (0.005, 0.1)


def marginal(p: float) -> bool:
    return bool(np.isfinite(p) and MARGINAL[0] <= p < MARGINAL[1])


def interval(values: np.ndarray) -> tuple[float, float]:
    """The ``CONFIDENCE`` Student-t interval of the mean of ``values`` (NaN below two values)."""
    from scipy import stats

    v = values[np.isfinite(values)]
    if len(v) < 2:
        return float("nan"), float("nan")
    if np.all(v == v[0]):  # no spread: the interval is the value (scipy would give NaN)
        return float(v[0]), float(v[0])
    ci = stats.ttest_1samp(v, 0.0).confidence_interval(CONFIDENCE)
    return float(ci.low), float(ci.high)


def mean_interval(values: np.ndarray) -> tuple[float, float, float]:
    """The mean of the finite ``values`` (NaN if none) and its ``interval``."""
    mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return (mean, *interval(values))


def paired_p(a: pd.Series, b: pd.Series) -> float:
    """Two-sided paired t-test of ``a`` against ``b`` (indexed by seed) on the seeds both have."""
    from scipy import stats

    both = pd.concat([a, b], axis=1, join="inner").dropna()
    if len(both) < 2:
        return float("nan")
    d = both.iloc[:, 0].to_numpy() - both.iloc[:, 1].to_numpy()
    if np.all(d == d[0]):  # equal runs (p = 1), or one constant difference (no noise: p = 0)
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_rel(both.iloc[:, 0], both.iloc[:, 1]).pvalue)


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p`` (NaN entries are left out and stay NaN)."""
    idx = [i for i in np.argsort(p) if np.isfinite(p[i])]
    m, out, running = len(idx), [float("nan")] * len(p), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def verdicts(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per variant of ``df`` (runs: ``variant``, ``seed``, ``diverged``, ``metric``): n,
    mean, interval, the Holm-corrected paired p-value against the best, and the verdict."""
    by = df.groupby(["seed", "variant"])[metric].mean().unstack()  # seed x variant
    rows = []
    for variant, g in df.groupby("variant", sort=False):
        mean, low, high = mean_interval(g[metric].to_numpy(dtype=float))
        rows.append(
            {
                "variant": variant,
                "n": len(g),
                "diverged": int(g["diverged"].sum()),
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
            }
        )
    out = pd.DataFrame(rows)
    if out["mean"].notna().any():
        best = out.loc[out["mean"].idxmax(), "variant"]
        others = [v for v in out["variant"] if v != best]
        raw = [paired_p(by[v], by[best]) if v in by else float("nan") for v in others]
        p = dict(zip(others, holm(raw)))
    else:
        best, p = None, {}
    out["p_vs_best"] = [p.get(v, float("nan")) for v in out["variant"]]

    def verdict(r) -> str:
        if r["variant"] == best:
            return "best"
        if r["diverged"] == r["n"]:
            return "diverged"
        if not np.isfinite(r["p_vs_best"]):
            return "—"
        return "indistinguishable" if r["p_vs_best"] >= ALPHA else "worse"

    out["verdict"] = out.apply(verdict, axis=1)
    return out
