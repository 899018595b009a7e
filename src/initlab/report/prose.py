"""Report prose: each study's summary in sentences computed from its numbers, and which profile
it ran."""

from __future__ import annotations

import numpy as np
import pandas as pd

from initlab.report.tables import ci_of

CE_LOSSES = ("cross_entropy", "bce", "bce_logits")  # losses whose value at a uniform guess is ln(classes)


def summary(
    question: str,
    vt: pd.DataFrame,
    baseline: float,
    final_loss: pd.Series | None = None,
    n_classes: int = 2,
) -> str:
    """Three to five sentences from the numbers: the question (none if ""), the answer, the evidence. With
    ``final_loss`` (per variant, its last epoch's training loss), the variants at chance say it,
    beside ln(classes), the loss of a model that has learnt nothing."""
    own = vt[~vt["reproduce"]]
    best = own[own["verdict"] == "best"].iloc[0]
    tie = own[own["verdict"] == "indistinguishable"]
    worse = own[own["verdict"] == "worse"]
    chance = own[own["ci_high"].fillna(own["mean"]) <= baseline + 0.02]
    diverged = own[own["verdict"] == "diverged"]
    out = [f"*{question}*"] if question else []
    if len(chance) == len(own):
        return " ".join(
            [
                *out,
                f"No variant learns: every one sits at chance (the majority class, {baseline:.3f}; "
                f"95 % intervals at most {baseline + 0.02:.3f} over {best['n']} seeds).",
            ]
        )
    out.append(
        f"Best on held-out test accuracy: `{best['variant']}`, "
        f"{ci_of(best)} (mean [95 % interval] over {best['n']} seeds)."
    )
    if len(tie):
        names = ", ".join(f"`{v}`" for v in tie["variant"].head(4)) + (" …" if len(tie) > 4 else "")
        out.append(
            f"{len(tie)} other variant{'s' if len(tie) > 1 else ''} cannot be told apart from it "
            f"(paired t-test over seeds, Holm-corrected, p >= 0.05): {names}."
        )
    else:
        out.append("Every other variant is worse than it (paired t-test over seeds, Holm-corrected, p < 0.05).")
    if len(worse):
        w = worse.loc[worse["mean"].idxmin()]
        sit = "sits" if len(chance) == 1 else "sit"
        at_chance = f"; {len(chance)} {sit} at chance (the majority class: {baseline:.3f})" if len(chance) else ""
        ce = chance[chance["loss"].isin(CE_LOSSES)]  # their loss, beside a uniform guess's: ln(classes)
        if len(ce) and final_loss is not None:
            at_chance += ": " + ", ".join(
                f"`{v}` (final training loss {final_loss.get(v, np.nan):.3f})" for v in ce["variant"].head(4)
            )
            at_chance += f"; ln {n_classes} = {np.log(n_classes):.3f} is the cross-entropy of a uniform guess"
        verb = "is" if len(worse) == 1 else "are"
        out.append(f"{len(worse)} {verb} worse, down to `{w['variant']}` at {ci_of(w)}{at_chance}.")
    if len(diverged):
        names = ", ".join(f"`{v}`" for v in diverged["variant"])
        out.append(f"{len(diverged)} diverged on every seed: {names}.")
    from initlab.results.stats import MARGINAL, marginal

    edge = own[[marginal(p) for p in own["p_vs_best"]]]
    if len(edge):
        names = ", ".join(f"`{v}` ({r})" for v, r in zip(edge["variant"].head(4), edge["verdict"].head(4)))
        out.append(
            f"{len(edge)} of these verdicts {'is' if len(edge) == 1 else 'are'} marginal "
            f"({MARGINAL[0]} <= p < {MARGINAL[1]}): another CPU's roundings can flip "
            f"{'it' if len(edge) == 1 else 'them'}, so read {'it' if len(edge) == 1 else 'them'} "
            f"as undecided: {names}{' …' if len(edge) > 4 else ''}."
        )
    return " ".join(out)


def profile_note(study: str, sp) -> str:
    """Which of the study's profiles it ran, and the command for each other one."""
    if not sp.profiles:
        return ""
    raw = sp.model_dump()
    ran = [n for n in sp.profiles if sp.with_profile(n, raw) == raw]  # setting it changes nothing
    out = [f"Profile: **{ran[0] if ran else 'default'}** (the one these numbers come from)."]
    for name, overrides in sp.profiles.items():
        if name not in ran:
            sets = " ".join(f"-S 'studies.{study}.{k}={'null' if v is None else v}'" for k, v in overrides.items())
            out.append(f"Its `{name}` profile: `dvc exp run {sets}`.")
    return " ".join(out)
