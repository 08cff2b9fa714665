"""``replace()`` of the frozen settings records (:class:`StormConfig`, :class:`storm_sc.training.TrainingConfig`)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

Record = TypeVar("Record")


def replace_fields(record: Record, changes: dict[str, Any], *, unknown_message: str) -> Record:
    """Copy the dataclass ``record`` with ``changes`` (validated by its ``__post_init__``); unknown names are an error.

    ``unknown_message`` is formatted with ``unknown`` and ``valid``, the sorted lists of wrong and of valid names.
    """
    valid = sorted(f.name for f in dataclasses.fields(record))
    unknown = sorted(set(changes) - set(valid))
    # dataclasses.replace would stop at the first unknown name with a bare TypeError from __init__; the user needs
    # every misspelt name and the valid ones.
    if unknown:
        raise ValueError(unknown_message.format(unknown=unknown, valid=valid))
    return dataclasses.replace(record, **changes)
