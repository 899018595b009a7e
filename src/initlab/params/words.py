"""The schema of ``report.yaml``, the report's words: each study's title and question, and the
figures its sources reported, set beside ours in the report's first table (``compare`` rows).

Only the report stage reads it (``load_words``); the knobs are ``params.yaml``'s. Every study of
params.yaml needs its title here; a study here that params.yaml lacks is not read. A bad value
stops the report with one line naming the key, the value and what is allowed, as in params.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from initlab.errors import ParamsError
from initlab.params.fields import Strict
from initlab.params.load import read_yaml
from initlab.params.messages import first_error
from initlab.params.schema import StudyName


class CompareRow(Strict):
    """A figure a source reported, beside ours: ``metric`` (a column of the evaluate table) over
    the runs matching ``where``, shown as its mean, mean ± std or percentage; or (``show: rank``)
    the best value of ``rank_by`` (an init, say) and those a paired test over seeds cannot tell
    from it (``initlab.results.stats``), not a ranking of means."""

    source: str  # the source document: '000' (source 000), 'dlai' (deeplearning.ai)
    claim: str
    theirs: str
    metric: str
    where: dict[str, Any] = {}
    show: Literal["mean", "mean_std", "percent", "rank"] = "mean"
    digits: Annotated[int, Field(ge=0, le=8)] = 4
    rank_by: str = "init"
    label: str = ""  # rank: what the metric is called in the row ("validation accuracy")


class StudyWords(Strict):
    """One study's words: its section's heading, the question printed under it, and its rows of
    the report's first table."""

    title: str
    question: str = ""
    compare: list[CompareRow] = []


class ReportWords(Strict):
    studies: dict[StudyName, StudyWords] = {}


def validate_words(raw: Any, studies: list[str], path: Path | str = "report.yaml") -> ReportWords:
    """``raw`` (report.yaml as read) as ``ReportWords``, with words for each of ``studies`` (those
    of params.yaml); a ``ParamsError`` of one line naming the key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        words = ReportWords.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError(first_error(exc, str(path)).replace("\n", " ")) from None
    missing = [s for s in studies if s not in words.studies]
    if missing:
        raise ParamsError(
            f"{path}: missing key studies.{missing[0]}; every study of params.yaml needs its title here"
        )
    return words


def load_words(path: Path | str, studies: list[str]) -> ReportWords:
    """Read and validate ``report.yaml`` for ``studies``; a ``ParamsError`` of one line on anything bad."""
    path = Path(path)
    return validate_words(read_yaml(path, "report words", "--words", "report.yaml"), studies, path)
