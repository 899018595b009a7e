"""Where every stage reads and writes, relative to the project root, and the local data mirror."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """Where every stage reads and writes, relative to the project root."""

    root: Path = Path(".")

    @property
    def pipeline(self) -> Path:
        return self.root / "pipeline"

    def raw(self, study: str) -> Path:
        return self.pipeline / "raw" / study

    def prepared(self, study: str) -> Path:
        return self.pipeline / "prepared" / f"{study}.npz"

    def norm_stats(self, study: str) -> Path:
        return self.pipeline / "normalize" / f"{study}.json"

    def trained(self, study: str) -> Path:
        return self.pipeline / "train" / study

    def metrics(self, study: str) -> Path:
        return self.pipeline / "metrics" / f"{study}.json"

    def runs_record(self, study: str) -> Path:
        return self.pipeline / "metrics" / f"{study}_runs.json"

    def evaluated(self, study: str) -> Path:
        return self.pipeline / "evaluate" / f"{study}.csv"

    def variants(self, study: str) -> Path:
        return self.pipeline / "evaluate" / f"{study}_variants.csv"

    def curves(self, study: str) -> Path:
        return self.pipeline / "evaluate" / f"{study}_curves.csv"

    def layers(self, study: str) -> Path:
        return self.pipeline / "evaluate" / f"{study}_layers.csv"

    @property
    def tracked(self) -> Path:
        return self.pipeline / "tracking.json"

    def timing(self, stage: str) -> Path:
        """Wall times of a stage (``train-<study>``, ``track``): beside the outputs, never one of
        them, so that outputs hash the same when they are the same (nothing depends on these)."""
        return self.pipeline / "timings" / f"{stage}.json"

    @property
    def reports(self) -> Path:
        return self.root / "reports"


def data_mirror() -> Path | None:
    """The local folder named by ``INITLAB_DATA_MIRROR`` (layout: ``fashion-mnist/``, ``ecg/``)."""
    value = os.environ.get("INITLAB_DATA_MIRROR")
    return Path(value) if value else None
