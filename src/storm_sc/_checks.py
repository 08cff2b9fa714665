"""Checks of numeric arguments shared by every room: what counts as an integer or a real number here."""

from __future__ import annotations

import math

import numpy as np


def is_integer(value: object) -> bool:
    """Whether ``value`` is a Python or NumPy integer (``True`` is not a count here).

    Examples
    --------
    >>> is_integer(3), is_integer(np.int64(3)), is_integer(True), is_integer(3.0)
    (True, True, False, False)
    """
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """Whether ``value`` is a finite Python or NumPy number (``True`` is not one here).

    Examples
    --------
    >>> is_real(0.1), is_real(np.float32(0.1)), is_real(float("nan")), is_real("0.1")
    (True, True, False, False)
    """
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def check_integer(value: object, name: str, *, minimum: int = 1, optional: bool = False) -> None:
    """Refuse a count argument that is not an integer >= ``minimum``, or ``None`` where ``optional``.

    Examples
    --------
    >>> check_integer(0, "n_draws")
    Traceback (most recent call last):
    ...
    ValueError: `n_draws` must be a positive integer, got 0.
    """
    if optional and value is None:
        return
    if not is_integer(value) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {what}{' or None' if optional else ''}, got {value!r}.")
