"""How the benchmark scripts print and save their results: markdown tables, mean ± sd cells, --out files."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import pandas as pd


def mean_sd(values: pd.Series) -> str:
    """``"mean ± sd"`` of the non-missing values (3 decimals); one value alone, or ``"n/a"`` when there is none.

    Examples
    --------
    >>> mean_sd(pd.Series([0.1, 0.3, None]))
    '0.200 ± 0.141'
    """
    values = values.dropna()
    if values.empty:
        return "n/a"
    if len(values) == 1:
        return f"{values.iloc[0]:.3f}"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` (no index), as the benchmarks print it.

    Examples
    --------
    >>> print(markdown_table(pd.DataFrame({"a": [1], "b": ["x"]})))
    | a | b |
    |---|---|
    | 1 | x |
    """
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def write_outputs(outs: Sequence[Path], text: str, rows: pd.DataFrame) -> None:
    """Write every ``--out`` path: ``.csv`` gets ``rows``, anything else the printed ``text``."""
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".csv":
            rows.to_csv(out, index=False)
        else:
            out.write_text(text + "\n")


def outputs_in_the_way(outs: Sequence[Path], overwrite: bool) -> str | None:
    """The message refusing to replace existing ``--out`` files, or ``None`` when nothing is in the way.

    Examples
    --------
    >>> outputs_in_the_way([Path("/nonexistent.md")], overwrite=False) is None
    True
    """
    existing = [str(o) for o in outs if o.exists()]
    if existing and not overwrite:
        return f"{existing} exist; pass --overwrite to replace them."
    return None


def publish(
    outs: Sequence[Path],
    header: Sequence[str],
    tables: Sequence[tuple[str | None, pd.DataFrame]],
    notes: str,
    rows: pd.DataFrame,
) -> str:
    """Print a benchmark's report (header lines, titled tables, notes) and write it to every ``--out`` path.

    Parameters
    ----------
    outs
        The ``--out`` paths (see :func:`write_outputs`).
    header
        Lines describing the run.
    tables
        ``(title or None, table)`` pairs, printed in order.
    notes
        How to read the tables.
    rows
        One row per measurement, for ``.csv`` outputs.

    Returns
    -------
    The printed text.

    Examples
    --------
    >>> text = publish([], ["run"], [(None, pd.DataFrame({"a": [1]}))], "a: one", pd.DataFrame())
    run
    <BLANKLINE>
    | a |
    |---|
    | 1 |
    <BLANKLINE>
    a: one
    """
    lines = [*header, ""]
    for title, table in tables:
        lines += ([title] if title else []) + [markdown_table(table), ""]
    text = "\n".join([*lines, notes])
    print(text)
    write_outputs(outs, text, rows)
    return text


def out_path_problems(outs: Sequence[Path], data_dir: Path, overwrite: bool) -> list[str]:
    """What is wrong with the ``--out`` paths of a benchmark reading ``data_dir`` (empty when nothing).

    Examples
    --------
    >>> out_path_problems([Path("/tmp/r.txt")], Path("/data"), overwrite=False)
    ['--out /tmp/r.txt: the suffix must be .md or .csv']
    """
    problems = []
    for out in outs:
        if out.suffix.lower() not in {".md", ".csv"}:
            problems.append(f"--out {out}: the suffix must be .md or .csv")
        elif out.resolve().is_relative_to(data_dir.resolve()):
            problems.append(f"--out {out} is inside the data folder {data_dir}")
        elif out.exists() and not overwrite:
            problems.append(f"--out {out} exists; pass --overwrite or choose another path")
    return problems


def progress_only(logger: logging.Logger) -> None:
    """Show the benchmark's own progress lines and storm_sc's warnings; silence the libraries' chatter."""
    import storm_sc as st

    st.settings.verbosity = "WARNING"
    logger.setLevel(logging.INFO)  # the benchmark's own progress lines, through storm_sc's handler
    for noisy in ("lightning.pytorch", "lightning.fabric", "squidpy"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
