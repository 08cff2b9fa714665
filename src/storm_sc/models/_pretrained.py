"""Named pretrained checkpoints: bundled in the package, cached in the data directory, or downloaded (pooch)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from storm_sc._settings import logger, settings

from ._checkpoint import CheckpointError, file_sha256

WEIGHTS_DIR = Path(__file__).parent / "weights"
_REGISTRY_FILE = WEIGHTS_DIR / "registry.json"
_SHA256_LENGTH = 64


@dataclass(frozen=True)
class PretrainedEntry:
    """One registered checkpoint.

    Attributes
    ----------
    name
        Registry name.
    filename
        File name, in the package's weights folder or in ``<data_dir>/models``.
    sha256
        sha256 of the file's bytes.
    url
        Where to download it from, or ``None``.
    description
        What it is (data, config, intended use).
    """

    name: str
    filename: str
    sha256: str
    url: str | None = None
    description: str = ""


def _load_registry() -> tuple[str | None, dict[str, PretrainedEntry]]:
    raw = json.loads(_REGISTRY_FILE.read_text())
    entries = {name: PretrainedEntry(name=name, **fields) for name, fields in raw.get("checkpoints", {}).items()}
    return raw.get("reference"), entries


_REFERENCE, _ENTRIES = _load_registry()


def list_pretrained() -> list[str]:
    """Names of the registered pretrained checkpoints.

    Returns
    -------
    Sorted names.

    Examples
    --------
    >>> import storm_sc as st
    >>> isinstance(st.models.list_pretrained(), list)
    True
    """
    return sorted(_ENTRIES)


def register_pretrained(
    name: str, *, filename: str, sha256: str, url: str | None = None, description: str = "", overwrite: bool = False
) -> PretrainedEntry:
    """Register a checkpoint so that ``StormModel.from_pretrained(name)`` finds, downloads and verifies it.

    Parameters
    ----------
    name
        Registry name.
    filename
        File name looked for in the package's weights folder, then in ``<st.settings.data_dir>/models``, and
        used for the download.
    sha256
        sha256 of the file (``sha256sum model.safetensors``).
    url
        Download address, or ``None`` for a file that must already be in one of those folders.
    description
        Free text.
    overwrite
        Replace an existing entry.

    Returns
    -------
    The entry.

    Examples
    --------
    >>> import storm_sc as st
    >>> st.models.register_pretrained("my-model", filename="my-model.safetensors", sha256="0" * 64,
    ...                               url="https://example.org/my-model.safetensors")  # doctest: +SKIP
    """
    sha = sha256.lower().removeprefix("sha256:")
    if len(sha) != _SHA256_LENGTH or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"`sha256` must be 64 hex digits (from `sha256sum FILE`); got {sha256!r}.")
    if Path(filename).name != filename:
        raise ValueError(f"`filename` must be a bare file name, not a path; got {filename!r}.")
    if name in _ENTRIES and not overwrite:
        raise ValueError(f"A pretrained checkpoint named {name!r} is already registered; pass overwrite=True.")
    entry = PretrainedEntry(name=name, filename=filename, sha256=sha, url=url, description=description)
    _ENTRIES[name] = entry
    return entry


def reference_name() -> str | None:
    """Name of the checkpoint ``StormModel.from_pretrained()`` loads by default."""
    return _REFERENCE


def resolve_pretrained(name: str | None, *, verbose: bool | None = None) -> Path:
    """Local file of a registered checkpoint: bundled, cached, or downloaded into the cache; sha256 verified.

    Parameters
    ----------
    name
        Registry name; ``None`` for the reference checkpoint.
    verbose
        Progress bar for downloads.

    Returns
    -------
    Path of the verified file.

    Examples
    --------
    >>> resolve_pretrained("storm-tiny-public-v5")  # doctest: +SKIP
    PosixPath('.../storm_sc/models/weights/storm-tiny-public-v5.safetensors')
    """
    import pooch

    if name is None:
        name = _REFERENCE
        entry = _ENTRIES.get(name) if name is not None else None
        if entry is None or not ((WEIGHTS_DIR / entry.filename).is_file() or entry.url):
            raise FileNotFoundError(
                f"This build of storm_sc has no reference checkpoint yet ({name!r} is not in "
                f"{_REGISTRY_FILE}, or its file is missing from {WEIGHTS_DIR}). Train one with "
                "`storm-sc pretrain --config configs/storm-tiny.yaml` and load it with `StormModel.load(path)`, or "
                "pass a checkpoint path to `StormModel.from_pretrained`."
            )
    entry = _ENTRIES.get(name)
    if entry is None:
        raise KeyError(
            f"{name!r} is neither an existing checkpoint file nor a registered pretrained model; registered: "
            f"{list_pretrained()}. Pass a path to a .safetensors file written by StormModel.save."
        )
    bundled = WEIGHTS_DIR / entry.filename
    if bundled.is_file():
        if file_sha256(bundled) != entry.sha256:
            raise CheckpointError(
                f"The bundled checkpoint {bundled} does not match its registered sha256 ({entry.sha256}); the "
                "installation is damaged. Reinstall storm_sc."
            )
        return bundled
    cache = settings.data_dir / "models"
    cached = cache / entry.filename
    if entry.url is None:
        if cached.is_file():
            if file_sha256(cached) != entry.sha256:
                raise CheckpointError(
                    f"{cached} does not match the registered sha256 of {name!r} ({entry.sha256}); it is another or a "
                    "damaged file. Replace it with the right one."
                )
            return cached
        raise FileNotFoundError(
            f"Checkpoint {name!r} has no download address; place {entry.filename} (sha256 {entry.sha256}) in "
            f"{WEIGHTS_DIR} or {cache}."
        )
    try:
        path = pooch.retrieve(
            entry.url,
            known_hash=f"sha256:{entry.sha256}",
            fname=entry.filename,
            path=cache,
            progressbar=settings.show_progress(verbose),
        )
    except ValueError as err:  # pooch's hash mismatch
        raise CheckpointError(
            f"The download of {name!r} from {entry.url} does not match its registered sha256 ({entry.sha256}): "
            f"{err}. The file was not used; try again later or report the mismatch."
        ) from err
    except Exception as err:
        raise ConnectionError(
            f"Could not download checkpoint {name!r} from {entry.url} ({type(err).__name__}: {err}). Without network "
            f"access, place {entry.filename} (sha256 {entry.sha256}) in {cache} by hand."
        ) from err
    logger.info("Checkpoint %r: %s", name, path)
    return Path(path)


def describe_pretrained(name: str) -> dict[str, str | None]:
    """Return the registry entry of a pretrained checkpoint as a dict (for manifests and model cards)."""
    if name not in _ENTRIES:
        raise KeyError(f"No pretrained checkpoint named {name!r}; registered: {list_pretrained()}.")
    return asdict(_ENTRIES[name])
