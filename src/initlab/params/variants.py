"""Variants: every model a study trains, a point of its grid and a seed, named as its runs are."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from initlab.params.schema import Params


@dataclass(frozen=True)
class Variant:
    """One trained model: a point of the study's grid and a seed."""

    study: str
    init: str
    loss: str
    normalize: str
    lr: float
    seed: int
    reproduce: bool = False
    model: str = ""  # a label of train.models; "" when the study has one architecture

    @property
    def name(self) -> str:
        base = f"{self.init}-{self.loss}-{self.normalize}-lr{self.lr:g}" + (f"-{self.model}" if self.model else "")
        return f"reproduce-{base}" if self.reproduce else base

    @property
    def run_name(self) -> str:
        return f"{self.name}-s{self.seed}"


def variants(params: Params, study: str) -> list[Variant]:
    """Every model of a study: inits x losses x normalisations x lrs x seeds, then the reproduction."""
    st = params.study(study).train
    out = [
        Variant(study, init, loss, norm, lr, seed, model=model)
        for model, init, loss, norm, lr, seed in itertools.product(
            st.model_labels, st.inits, st.losses, st.normalize, st.lr, st.seeds
        )
    ]
    if st.reproduce:
        r = st.reproduce
        out += [
            Variant(study, init, loss, "none", st.lr[0], seed, True, model)
            for model, init, loss, seed in itertools.product(st.model_labels, r.inits, r.losses, r.seeds)
        ]
    return out
