"""Report tables: number formatting, the variants table, the seed-protocol table and the seeds'
comparison rows, all as markdown."""

from __future__ import annotations

import numpy as np
import pandas as pd

from initlab.params.words import CompareRow, ReportWords


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if np.isnan(mean):
        return "—"
    return f"{mean:.{digits}f} ± {0.0 if np.isnan(std) else std:.{digits}f}"


def _ci(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``0.873 [0.861, 0.885]``: a mean and its 95 % interval ("—" where there is none)."""
    if not np.isfinite(mean):
        return "—"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def ci_of(r, prefix: str = "") -> str:
    """``_ci`` of a variants-table row: its ``mean`` (or ``test_mean`` with ``prefix="test_"``)."""
    return _ci(r[f"{prefix}mean"], r[f"{prefix}ci_low"], r[f"{prefix}ci_high"])


def _verdict(r) -> str:
    from initlab.results.stats import marginal

    if not np.isfinite(r["p_vs_best"]):
        return r["verdict"]
    return f"{r['verdict']}{', marginal' if marginal(r['p_vs_best']) else ''} (p = {r['p_vs_best']:.2g})"


def variant_table(vt: pd.DataFrame, label: str) -> pd.DataFrame:
    """The variants of ``vt`` (``pipeline/evaluate/<study>_variants.csv``), best first; variants
    whose figures print the same share one row."""
    rows = []
    order = vt.assign(_best=vt["verdict"] != "best")
    for r in order.sort_values(
        ["_best", "mean", "variant"], ascending=[True, False, True], na_position="last"
    ).to_dict("records"):
        rows.append(
            {
                "variants": r["variant"],
                label: ci_of(r),
                "verdict (paired t-test vs best, Holm)": _verdict(r),
                "diverged": f"{r['diverged']}/{r['n']}" if r["diverged"] else "no",
                "seeds": r["n"],
            }
        )
    table = pd.DataFrame(rows)
    same = [c for c in table.columns if c != "variants"]
    inits = dict(zip(vt["variant"], vt["init"]))
    grouped = table.groupby(same, sort=False, dropna=False)["variants"].agg(lambda g: _names(list(g), inits))
    return grouped.reset_index()[["variants", *same]]


def _names(variants: list[str], inits: dict[str, str]) -> str:
    """``a-bce-none-lr2``, ``a-mse-none-lr2``, ``b-bce-none-lr2`` as "`a` (bce-none-lr2, mse-none-lr2),
    `b` (bce-none-lr2)": a group of many variants stays readable."""
    if len(variants) == 1:
        return f"`{variants[0]}`"
    by_init: dict[str, list[str]] = {}
    for v in variants:
        init = inits[v]
        by_init.setdefault(init, []).append(v.removeprefix(f"{init}-") if v.startswith(f"{init}-") else v)
    return ", ".join(f"`{i}` ({', '.join(rest)})" for i, rest in by_init.items())


def markdown_table(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False, disable_numparse=True)  # "0.990" stays "0.990"


def protocol_table(vt: pd.DataFrame) -> tuple[list[str], str]:
    """Per init, the seed's protocol figure (its ``reproduce-`` rows: its split, validation with
    dropout on) beside the proper one of the same models (eval mode, held-out test set) and the
    study's own run of that init (stratified split, eval mode, test set); and one sentence."""
    rep = vt[vt["reproduce"]]
    own = vt[~vt["reproduce"]].set_index(["init", "loss"])
    lines = [
        "| init | seed's protocol: validation, dropout on | same models: test, eval mode | "
        "our run: test, eval mode | gap (pp) |",
        "|---|---|---|---|---|",
    ]
    gaps = {}
    for r in rep.to_dict("records"):
        o = own.loc[(r["init"], r["loss"])] if (r["init"], r["loss"]) in own.index else None
        gap = 100 * (r["mean"] - r["test_mean"])
        gaps[r["init"]] = gap
        ours = ci_of(o, "test_") if o is not None else "—"
        lines.append(f"| {r['init']} | {ci_of(r)} | {ci_of(r, 'test_')} | {ours} | {gap:+.1f} |")
    trained = {k: g for k, g in gaps.items() if np.isfinite(g)}
    worst = max(trained, key=lambda k: abs(trained[k])) if trained else None
    sentence = (
        f"Measured as the seed measures it (dropout on, validation rows of its own unstratified "
        f"split), an init's figure is {np.mean(list(trained.values())):+.1f} percentage points from the "
        f"proper one of the same models (eval mode, held-out test set) on average; the gap is largest "
        f"for `{worst}` ({trained[worst]:+.1f} pp)."
        if worst
        else ""
    )
    return lines, sentence


def rows_where(df, **where) -> pd.DataFrame:
    """The rows of ``df`` whose columns equal ``where``'s values."""
    m = np.ones(len(df), dtype=bool)
    for k, v in where.items():
        m &= df[k] == v
    return df[m]


def compare_row(row: CompareRow, df: pd.DataFrame) -> str | None:
    """One line of the sources' table: the source's figure and ours, read from this run's results."""
    r = rows_where(df, **row.where)
    if not len(r):
        return None
    values = r[row.metric]
    if row.show == "rank":  # decided by paired tests over seeds, not by ranking means
        from initlab.results.stats import verdicts

        v = verdicts(r.assign(variant=r[row.rank_by].astype(str)), row.metric).set_index("variant")
        fmt = lambda k: f"{k} {100 * v.loc[k, 'mean']:.{row.digits}f} %"  # noqa: E731
        from initlab.results.stats import MARGINAL, marginal

        top = v[v["verdict"].isin(["best", "indistinguishable"])].sort_values("mean", ascending=False)
        edge = [k for k in v.index if marginal(v.loc[k, "p_vs_best"])]
        # The top group, not its first place: which of its members leads moves with the CPU's roundings.
        ours = (
            f"top by {row.label or row.metric} (the highest mean and those indistinguishable from it, "
            f"paired t-test, Holm): {', '.join(map(fmt, top.index))}; "
            f"worse: {int((v['verdict'] == 'worse').sum())}"
            + (f"; marginal ({MARGINAL[0]} <= p < {MARGINAL[1]}): {', '.join(edge)}" if edge else "")
        )
    elif row.show == "percent":
        ours = f"{100 * values.mean():.{row.digits}f} %"
    elif row.show == "mean_std":
        ours = _pm(values.mean(), values.std(), row.digits)
    else:
        ours = f"{values.mean():.{row.digits}f}"
    return f"| {row.source} | {row.claim} | {row.theirs} | {ours} |"


def seed_comparison(words: ReportWords, frames: dict[str, pd.DataFrame]) -> list[str]:
    """The sources' own figures beside ours: each study's ``compare`` rows (report.yaml)."""
    lines = ["| seed | claim | seed's figure | ours |", "|---|---|---|---|"]
    for study, df in frames.items():
        lines += [line for row in words.studies[study].compare if (line := compare_row(row, df))]
    return lines
