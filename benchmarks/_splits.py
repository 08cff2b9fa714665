"""Train/test splits of her2st sections: leave one section out within a patient, leave one patient out across.

Section ids are a patient letter followed by a section number (``"A1"`` .. ``"H3"``). Every split is decided
from the ids alone, before any data is read, so nothing about the held-out sections can leak into it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_SECTION_ID = re.compile(r"^([A-Za-z])(\d+)$")


@dataclass(frozen=True)
class Split:
    """One train/test split.

    Attributes
    ----------
    scheme
        ``"within_patient"`` or ``"across_patient"``.
    name
        What is held out, e.g. ``"C3"`` (a section) or ``"patient C"``.
    train
        Section ids the model is fitted (and tuned) on.
    test
        Section ids it is evaluated on, each scored on its own.
    """

    scheme: str
    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]


def patient_of(section: str) -> str:
    """The patient letter of a her2st section id.

    Parameters
    ----------
    section
        A section id such as ``"C3"``.

    Returns
    -------
    The upper-case patient letter.

    Examples
    --------
    >>> patient_of("c3")
    'C'
    """
    match = _SECTION_ID.match(section.strip())
    if match is None:
        raise ValueError(f"{section!r} is not a her2st section id; expected a patient letter and a number, e.g. 'C3'.")
    return match.group(1).upper()


def _check_sections(sections: Sequence[str]) -> list[str]:
    if isinstance(sections, str):
        raise TypeError(
            f"`sections` must be a sequence of section ids such as ['C2', 'C3'], not the string {sections!r}."
        )
    ids = [s.strip().upper() for s in sections]
    for s in ids:
        patient_of(s)
    dupes = sorted({s for s in ids if ids.count(s) > 1})
    if dupes:
        raise ValueError(f"`sections` lists {dupes} more than once; give each section once.")
    return ids


def within_patient_splits(sections: Sequence[str]) -> list[Split]:
    """Leave one section out among the sections of the same patient.

    Patients with a single section give no split (there is nothing to train on).

    Parameters
    ----------
    sections
        Section ids with images.

    Returns
    -------
    One :class:`Split` per section of every patient that has at least two sections, in sorted order.

    Examples
    --------
    >>> [s.name for s in within_patient_splits(["C2", "C3", "D1"])]
    ['C2', 'C3']
    """
    ids = _check_sections(sections)
    splits = []
    for patient in sorted({patient_of(s) for s in ids}):
        own = sorted(s for s in ids if patient_of(s) == patient)
        if len(own) < 2:
            continue
        for held_out in own:
            train = tuple(s for s in own if s != held_out)
            splits.append(Split("within_patient", held_out, train, (held_out,)))
    return splits


def across_patient_splits(sections: Sequence[str]) -> list[Split]:
    """Leave one patient out: train on every other patient's sections, test on each section of that patient.

    Parameters
    ----------
    sections
        Section ids with images.

    Returns
    -------
    One :class:`Split` per patient, or an empty list when fewer than two patients are present.

    Examples
    --------
    >>> [(s.name, s.train) for s in across_patient_splits(["C2", "D1"])]
    [('patient C', ('D1',)), ('patient D', ('C2',))]
    >>> across_patient_splits(["C2", "C3"])
    []
    """
    ids = _check_sections(sections)
    patients = sorted({patient_of(s) for s in ids})
    if len(patients) < 2:
        return []
    splits = []
    for patient in patients:
        test = tuple(sorted(s for s in ids if patient_of(s) == patient))
        train = tuple(sorted(s for s in ids if patient_of(s) != patient))
        splits.append(Split("across_patient", f"patient {patient}", train, test))
    return splits


def inner_groups(sections_of_rows: np.ndarray, x_um: np.ndarray, *, n_blocks: int = 3) -> np.ndarray:
    """Groups for tuning hyper-parameters inside the training set, never touching the held-out sections.

    With two or more training sections, each section is a group (leave one training section out), which mirrors
    the outer split. With a single training section, it is cut into ``n_blocks`` vertical stripes of equal spot
    count so that neighbouring, correlated spots do not fall on both sides of a fold.

    Parameters
    ----------
    sections_of_rows
        ``(n,)`` section id of each training row.
    x_um
        ``(n,)`` x position of each training row (any unit), used only for the single-section fallback.
    n_blocks
        Number of stripes for the single-section fallback.

    Returns
    -------
    ``(n,)`` integer group labels, at least two distinct values.

    Examples
    --------
    >>> inner_groups(np.array(["C2", "C2", "C3"]), np.zeros(3)).tolist()
    [0, 0, 1]
    >>> inner_groups(np.array(["C2"] * 6), np.arange(6.0)).tolist()
    [0, 0, 1, 1, 2, 2]
    """
    sections_of_rows = np.asarray(sections_of_rows)
    x_um = np.asarray(x_um, dtype=np.float64)
    if sections_of_rows.shape != x_um.shape or sections_of_rows.ndim != 1:
        raise ValueError(
            f"`sections_of_rows` and `x_um` must be 1-D and of equal length; got {sections_of_rows.shape} and {x_um.shape}."
        )
    if n_blocks < 2:
        raise ValueError(f"`n_blocks` must be at least 2 to make a fold, got {n_blocks}.")
    uniques, labels = np.unique(sections_of_rows, return_inverse=True)
    if len(uniques) >= 2:
        return labels.astype(np.int64)
    if len(x_um) < n_blocks:
        raise ValueError(f"a single training section with {len(x_um)} rows cannot be cut into {n_blocks} blocks.")
    order = np.argsort(x_um, kind="stable")
    groups = np.empty(len(x_um), dtype=np.int64)
    groups[order] = np.arange(len(x_um)) * n_blocks // len(x_um)
    return groups
