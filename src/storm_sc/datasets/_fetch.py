"""The shipped file registry and the data-directory cache: use local files as they are, download (verified) the rest.

The cache under ``st.settings.data_dir`` mirrors the upstream layout (``her2st/data/ST-cnts/C2.tsv.gz``, ...), so a
folder that already holds the files works offline. Files found there are never hash-checked (some local copies are
re-packaged and not byte-identical to upstream); only downloads are.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from storm_sc._settings import DATA_DIR_ENV, logger, settings

REGISTRY_FILE = "registry.json"
RAW_GITHUB = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
# Base URL of a mirror that serves every file under "<host>/<path of the upstream URL>" (institutional proxies,
# offline mirrors, tests); the sha256 check is the same.
MIRROR_ENV = "STORM_SC_DATA_MIRROR"


@functools.cache
def registry() -> dict[str, Any]:
    """Return the registry shipped with the package: ``{"sources": {...}, "files": {relpath: entry}}``."""
    text = resources.files(__package__).joinpath(REGISTRY_FILE).read_text()
    return json.loads(text)


def entry(relpath: str) -> dict[str, Any]:
    """Registry entry of a file (path relative to the data directory)."""
    files = registry()["files"]
    if relpath not in files:
        raise KeyError(f"{relpath!r} is not in the storm_sc dataset registry.")
    return files[relpath]


def registered(prefix: str) -> list[str]:
    """Return the registered paths starting with ``prefix``, sorted."""
    return sorted(p for p in registry()["files"] if p.startswith(prefix))


def file_url(relpath: str) -> str | None:
    """Upstream URL of a registered file, or ``None`` when it cannot be downloaded."""
    item = entry(relpath)
    if item.get("url"):
        return item["url"]
    source = item.get("source")
    if source is None:
        return None
    src = registry()["sources"][source]
    return RAW_GITHUB.format(repo=src["repo"], commit=src["commit"], path=item["path"])


def local_path(relpath: str) -> Path:
    """Where a registered file lives (or would be downloaded to) in the data directory."""
    entry(relpath)
    return settings.data_dir / relpath


def is_local(relpath: str) -> bool:
    """Whether a registered file is already in the data directory."""
    return local_path(relpath).is_file()


def can_fetch(relpath: str) -> bool:
    """Whether a registered file is local or can be downloaded."""
    return is_local(relpath) or file_url(relpath) is not None


def _download_url(url: str) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + url.split("://", 1)[-1]


def fetch(relpath: str, *, verbose: bool | None = None) -> Path:
    """Path of a registered file in the data directory, downloading it first if it is not there.

    Parameters
    ----------
    relpath
        Path relative to the data directory, as in the registry (e.g. ``"her2st/data/ST-cnts/C2.tsv.gz"``).
    verbose
        Show a download progress bar (default: ``st.settings``).

    Returns
    -------
    The local path. A file already present is returned as it is, unchecked; a download is verified against the
    registry's sha256 (when known) before it is kept.
    """
    target = local_path(relpath)
    if target.is_file():
        return target
    url = file_url(relpath)
    if url is None:
        note = entry(relpath).get("note", "no public source")
        raise FileNotFoundError(
            f"{relpath} is not in the data directory {settings.data_dir} and cannot be downloaded ({note}). "
            f"Place it at {target}, or set ${DATA_DIR_ENV} to a folder that holds it."
        )
    import pooch
    import requests

    known = entry(relpath).get("sha256")
    source = _download_url(url)
    if known is None:
        logger.warning("%s: no sha256 recorded yet; the download from %s is not verified", relpath, source)
    logger.info("downloading %s from %s", relpath, source)
    try:
        path = pooch.retrieve(
            source,
            known_hash=None if known is None else f"sha256:{known}",
            fname=relpath,
            path=settings.data_dir,
            progressbar=settings.show_progress(verbose),
        )
    except ValueError as err:
        if "hash" in str(err).lower():
            raise ValueError(
                f"The download of {relpath} from {source} does not match the sha256 recorded in storm_sc's registry "
                f"({known}); it was discarded. The upstream file changed or the transfer was corrupted: retry, or "
                "report it if it persists."
            ) from err
        raise
    except requests.exceptions.RequestException as err:
        raise OSError(
            f"Could not download {relpath} from {source}: {err}. Check the connection, or place the file at {target}."
        ) from err
    except PermissionError as err:
        raise PermissionError(
            f"Cannot write {relpath} into the data directory {settings.data_dir}: it is read-only. Set "
            f"${DATA_DIR_ENV} (or st.settings.data_dir) to a writable folder."
        ) from err
    return Path(path)


def fetch_all(relpaths: Iterable[str], *, verbose: bool | None = None) -> dict[str, Path]:
    """Fetch several files; checks first that every missing one can be downloaded, so nothing is half-fetched."""
    relpaths = list(relpaths)
    blocked = [p for p in relpaths if not can_fetch(p)]
    if blocked:
        notes = {entry(p).get("note", "no public source") for p in blocked}
        raise FileNotFoundError(
            f"{len(blocked)} file(s) are not in the data directory {settings.data_dir} and cannot be downloaded: "
            f"{blocked[:5]}{' ...' if len(blocked) > 5 else ''} ({'; '.join(sorted(notes))}). Place them there or "
            f"set ${DATA_DIR_ENV} to a folder that holds them."
        )
    return {p: fetch(p, verbose=verbose) for p in relpaths}
