"""Answers to ``--suggest``: the suggestions CSV with its ``answer`` column filled in, read back as positives and negatives.

``suggested.csv`` lists each image with the label it has now and an empty
``answer``. A user writes, per row: ``yes`` (the label is right), ``no`` (it
is wrong), a class name (the image is of that class) or ``none`` (of no
class); rows left empty are skipped. ``no`` on an image labelled "none" says
only that it is of *some* class, which teaches nothing, so it is skipped too:
name the class instead.

Answers accumulate: ``label`` keeps every answer it has read in the output
folder's ``answers.csv`` and reads it again on the next round there, so a
user answers each round's new suggestions only.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pixclust.embeddings import Embeddings
from pixclust.errors import UsageError
from pixclust.labelling.label import NONE, NONE_LABEL
from pixclust.names import from_cell

YES = ("yes", "y")
NO = ("no", "n")


@dataclass
class Feedback:
    """Answers about single images: ``positive`` (row, class) pairs, and ``negative`` (row, class) where the
    image is not of that class; class ``NONE_LABEL`` in ``negative`` means "of no class" (not of any)."""

    positive: list[tuple[int, int]] = field(default_factory=list)
    negative: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positive) + len(self.negative)


@dataclass(frozen=True)
class Answer:
    """One answered suggestion as written: the image's path, the label it had, the answer."""

    path: str
    current_label: str
    answer: str


ANSWER_COLUMNS = ("path", "current_label", "answer")


def read_answers(path: str | Path) -> list[Answer]:
    """The rows of a suggestions CSV whose ``answer`` cell is filled in."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            rows = list(csv.DictReader(stream))
    except OSError as error:
        raise UsageError(
            f"cannot read --feedback {path} ({error.strerror}); give the suggested.csv you answered"
        ) from error
    except (csv.Error, UnicodeDecodeError) as error:
        raise UsageError(f"--feedback {path} is not a CSV ({error}); give the suggested.csv you answered") from error
    if rows and not {"path", "answer"} <= set(rows[0]):
        raise UsageError(
            f"--feedback {path} has no 'path' and 'answer' columns; answer the suggested.csv 'pixclust label --suggest' wrote"
        )
    return [
        Answer(
            from_cell((row.get("path") or "").strip()),
            from_cell((row.get("current_label") or "").strip()),
            from_cell((row.get("answer") or "").strip()),
        )
        for row in rows
        if (row.get("answer") or "").strip()
    ]


def write_answers(path: Path, answers: Sequence[Answer]) -> None:
    """Every answer so far, one row per image (the latest answer wins), atomically."""
    from pixclust.names import write_csv

    latest = {answer.path: answer for answer in answers}
    rows = ((a.path, a.current_label, a.answer) for a in latest.values())
    write_csv(path, ANSWER_COLUMNS, rows, text=ANSWER_COLUMNS)


def feedback_from(
    answers: Sequence[Answer], embeddings: Embeddings, class_names: Sequence[str], *, source: str | Path
) -> Feedback:
    """``answers`` as positives and negatives over ``embeddings``' rows; the latest answer about an image wins."""
    from pixclust.curation.search import rows_of

    latest = list({answer.path: answer for answer in answers}.values())
    found = rows_of(embeddings, [answer.path for answer in latest])
    missing = [answer.path for answer, row in zip(latest, found, strict=True) if row is None]
    if missing:
        raise UsageError(
            f"{source}: {len(missing)} answered paths are not in the run (first: {missing[0]}); answer this run's suggestions"
        )
    index = {name.lower(): c for c, name in enumerate(class_names)}
    feedback = Feedback()
    for answer, image in zip(latest, found, strict=True):
        assert image is not None
        current = index.get(answer.current_label.lower(), NONE_LABEL)
        word = answer.answer.lower()
        if word in YES:
            (feedback.positive if current != NONE_LABEL else feedback.negative).append((image, current))
        elif word in NO:
            if current != NONE_LABEL:
                feedback.negative.append((image, current))
        elif word == NONE:
            feedback.negative.append((image, NONE_LABEL))
        elif word in index:
            feedback.positive.append((image, index[word]))
        else:
            raise UsageError(
                f"{source}: answer {answer.answer!r} for {answer.path} is not yes, no, none or a class "
                f"({', '.join(class_names)}); fix that cell"
            )
    return feedback
