"""Where the benchmark scripts find the real public datasets, and how they read them without writing there."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """``$STORM_SC_DATA_DIR``, else ``../shared/data`` next to the repository.

    Returns
    -------
    The folder holding the datasets (``her2st/``, ``dlpfc_151675/``, ``mob/``, ...).

    Examples
    --------
    >>> default_data_dir().name  # doctest: +SKIP
    'data'
    """
    env = os.environ.get("STORM_SC_DATA_DIR")
    return Path(env).expanduser() if env else (REPO_ROOT.parent / "shared" / "data")


def linked_data_dir(source: Path, prefixes: Sequence[str], target: Path) -> list[str]:
    """Point a writable data folder at the files of a (read-only) data folder, file by file.

    storm_sc's loaders read from ``st.settings.data_dir`` and write caches and downloads there. Linking each
    registered file that exists under ``source`` into ``target`` (a temporary folder) lets the loaders find the
    data offline while anything they might write lands in ``target``, never in ``source``. Nothing is copied.

    Parameters
    ----------
    source
        The data folder (upstream layout, e.g. ``dlpfc_151675/filtered_feature_bc_matrix.h5``).
    prefixes
        Registry path prefixes to link (e.g. ``"dlpfc_151675/"``): the registered files that exist under
        ``source``; a folder prefix (ending in ``/``) under which the registry lists no file: every file in it.
    target
        The writable folder (created if needed).

    Returns
    -------
    The paths (relative to ``source``) that were linked.

    Examples
    --------
    >>> import tempfile
    >>> linked_data_dir(Path("/nonexistent"), ["mob/"], Path(tempfile.mkdtemp()))
    []
    """
    from storm_sc.datasets._fetch import registered

    linked = []
    for prefix in prefixes:
        rels = registered(prefix)
        folder = source / prefix
        if not rels and prefix.endswith("/") and folder.is_dir():
            # a folder the registry lists nothing in, whose files the loaders find by looking (other her2st
            # patients' images in the upstream layout)
            rels = sorted(p.relative_to(source).as_posix() for p in folder.rglob("*") if p.is_file())
        for rel in rels:
            src = source / rel
            if not src.is_file():
                continue
            dst = target / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.exists():
                dst.symlink_to(src.resolve())
            linked.append(rel)
    return linked


@contextmanager
def offline_data(data_dir: Path, datasets: dict[str, Sequence[str]], *, prefix: str) -> Iterator[Path]:
    """storm_sc's loaders pointed at a scratch folder of links to the datasets' files in ``data_dir``.

    Loaders (and model caches) then find the data offline and write, if anything, into the scratch folder, never
    into ``data_dir``. The previous ``st.settings.data_dir`` is restored and the folder removed on exit (the
    benchmarks' ``main`` also runs inside other programs, e.g. tests).

    Parameters
    ----------
    data_dir
        The (read-only) data folder.
    datasets
        Name of each dataset the run reads -> its registry path prefixes (the first one must match a file).
    prefix
        Name prefix of the scratch folder.

    Yields
    ------
    The scratch folder (its ``data`` subfolder holds the links).
    """
    import storm_sc as st

    work = Path(tempfile.mkdtemp(prefix=prefix))
    previous = st.settings._data_dir
    try:
        prefixes = sorted({p for files in datasets.values() for p in files})
        linked = linked_data_dir(data_dir, prefixes, work / "data")
        missing = [name for name, files in datasets.items() if not any(rel.startswith(files[0]) for rel in linked)]
        if missing:
            raise SystemExit(f"no files of {missing} in {data_dir}; pass --data-dir or set STORM_SC_DATA_DIR.")
        st.settings.data_dir = work / "data"
        yield work
    finally:
        st.settings.data_dir = previous
        shutil.rmtree(work, ignore_errors=True)
