"""The STORM checkpoint file: one ``.safetensors`` file holding the weights and, in its header, everything else.

Why one file rather than a folder: it is copied, downloaded and verified as a unit (one sha256 in the pretrained
registry, one ``pooch`` download), it cannot lose its vocabulary or config on the way, and it is written
atomically. The safetensors header carries string metadata, which holds the JSON config, the gene vocabulary, the
training-data manifest, the package version and a content hash; ``StormModel.inspect`` reads it without loading
any weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from storm_sc._settings import logger

FORMAT = "storm_sc.checkpoint"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"
_STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A file that is not a valid STORM checkpoint: missing, truncated, not safetensors, or modified.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import storm_sc as st
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(tmp.name, "model.safetensors")
    >>> _ = path.write_bytes(b"an interrupted download")
    >>> try:
    ...     st.models.StormModel.load(path)
    ... except st.models.CheckpointError as err:
    ...     print(type(err).__name__, "not a readable STORM checkpoint" in str(err))
    CheckpointError True
    >>> issubclass(st.models.CheckpointError, ValueError)
    True
    >>> tmp.cleanup()
    """


class IncompatibleCheckpointError(CheckpointError):
    """A valid STORM checkpoint that this installation cannot use (newer format or version, config, vocabulary).

    Examples
    --------
    >>> import pathlib, tempfile, torch
    >>> from safetensors.torch import save_file
    >>> import storm_sc as st
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(tmp.name, "future.safetensors")
    >>> header = {"format": "storm_sc.checkpoint", "format_version": "99", "storm_sc_version": "99.0.0"}
    >>> save_file({"w": torch.zeros(1)}, path, metadata=header)  # as if written by a future storm_sc
    >>> try:
    ...     st.models.StormModel.load(path)
    ... except st.models.IncompatibleCheckpointError as err:
    ...     print(isinstance(err, st.models.CheckpointError), "Upgrade storm_sc" in str(err))
    True True
    >>> tmp.cleanup()
    """


def storage_dtype(name: str) -> torch.dtype:
    """Return the torch dtype for a storage name (``"float32"``, ``"float16"``, ``"bfloat16"``)."""
    if name not in _STORAGE_DTYPES:
        raise ValueError(f"`dtype` must be one of {sorted(_STORAGE_DTYPES)}; got {name!r}.")
    return _STORAGE_DTYPES[name]


def content_digest(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 over tensor names, dtypes, shapes and bytes and over the metadata (except the digest itself).

    Parameters
    ----------
    tensors
        The stored tensors.
    metadata
        The stored header metadata.

    Returns
    -------
    Hex digest.

    Examples
    --------
    >>> len(content_digest({"w": torch.zeros(2)}, {"format": FORMAT}))
    64
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    for key in sorted(metadata):
        if key != "content_sha256":
            h.update(f"{key}={metadata[key]}|".encode())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (what the pretrained registry pins).

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    Hex digest.

    Examples
    --------
    >>> file_sha256("model.safetensors")  # doctest: +SKIP
    '9f2c...'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checkpoint(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], *, overwrite: bool = False
) -> Path:
    """Write tensors and metadata as a STORM checkpoint, atomically; adds format fields and the content hash.

    Parameters
    ----------
    path
        Target file (``.safetensors`` is appended when it has no suffix).
    tensors
        Name to tensor.
    metadata
        String header fields.
    overwrite
        Replace an existing file.

    Returns
    -------
    The path written.

    Examples
    --------
    >>> write_checkpoint("w.safetensors", {"w": torch.zeros(2)}, {})  # doctest: +SKIP
    PosixPath('w.safetensors')
    """
    from safetensors.torch import save_file

    path = Path(path)
    # Checked before the suffix is added: an existing folder "runs" must not become a sibling file "runs.safetensors".
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder; a STORM checkpoint is a single file, e.g. {path / 'model'}{SUFFIX}."
        )
    if not path.suffix:
        path = path.with_suffix(SUFFIX)
    elif path.suffix != SUFFIX:
        # "model.pt" reads as a torch.save pickle to anyone who finds it; torch.load cannot open it.
        logger.warning("%s: the file is written in safetensors format whatever its suffix; name it *%s.", path, SUFFIX)
    if path.is_dir():
        raise IsADirectoryError(
            f"{path} is a folder; a STORM checkpoint is a single file, e.g. {path / 'model'}{SUFFIX}."
        )
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it, or choose another path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**metadata, "format": FORMAT, "format_version": str(FORMAT_VERSION)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta["content_sha256"] = content_digest(tensors, meta)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # the temporary file is private; the checkpoint gets the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_metadata(path: str | Path, *, compatible: bool = True) -> dict[str, str]:
    """Read the header metadata of a checkpoint, checking it is a STORM checkpoint of a supported format.

    Parameters
    ----------
    path
        The checkpoint file.
    compatible
        Also refuse a checkpoint of a newer format or storm_sc release (``False`` to read what such a header says).

    Returns
    -------
    String header fields.

    Examples
    --------
    >>> read_metadata("model.safetensors")["storm_sc_version"]  # doctest: +SKIP
    '0.1.0'
    """
    from safetensors import SafetensorError, safe_open

    path = _existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable STORM checkpoint (truncated, or not a safetensors file): {err}. Download or "
            "copy it again."
        ) from err
    _check_storm(path, metadata)
    if compatible:
        check_compatible(path, metadata)
    return metadata


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read and verify a checkpoint: format, version and content hash.

    Parameters
    ----------
    path
        The checkpoint file.

    Returns
    -------
    ``(tensors, metadata)``.

    Examples
    --------
    >>> tensors, meta = read_checkpoint("model.safetensors")  # doctest: +SKIP
    """
    from safetensors import SafetensorError, safe_open

    path = _existing_file(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            _check_storm(path, metadata)
            check_compatible(path, metadata)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable STORM checkpoint (truncated, or not a safetensors file): {err}. Download or "
            "copy it again."
        ) from err
    stored = metadata.get("content_sha256")
    if stored is None or content_digest(tensors, metadata) != stored:
        raise CheckpointError(
            f"{path} fails its integrity check (content sha256 mismatch): the weights or header were modified or "
            "corrupted after saving. Do not use it; download or copy it again."
        )
    return tensors, metadata


def decode_json(path: Path | str, metadata: dict[str, str], key: str) -> Any:
    """Decode a JSON field of the header, with a clear error when missing or malformed."""
    if key not in metadata:
        raise IncompatibleCheckpointError(f"{path} has no {key!r} in its header; it was not written by storm_sc.")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the {key!r} header field is not valid JSON ({err}).") from err


def _existing_file(path: str | Path) -> Path:
    path = with_checkpoint_suffix(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; a STORM checkpoint is a single {SUFFIX} file{folder_hint(path)}.")
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    return path


def folder_hint(folder: Path) -> str:
    """``": pass '<folder>/model.safetensors'"`` where the folder holds one (a training run's output), else ``""``."""
    # Named, not loaded in its place: the path a script keeps should be the file that was used, as save() requires.
    model_file = folder / f"model{SUFFIX}"
    return f": pass '{model_file}' (the model a training run writes there)" if model_file.is_file() else ""


def with_checkpoint_suffix(path: str | Path) -> Path:
    """``path``, or ``path`` + ``.safetensors`` where only that exists: what ``save(path)`` wrote for a bare name."""
    path = Path(path)
    if not path.exists() and not path.suffix and path.with_suffix(SUFFIX).is_file():
        return path.with_suffix(SUFFIX)
    return path


def _release(version: str) -> tuple[int, int] | None:
    """``(major, minor)`` of a version string; ``None`` where it has none (0.0.x is a real release)."""
    match = re.match(r"^(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _check_storm(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a STORM checkpoint (header format {metadata.get('format')!r}). "
            "Pass a file written by StormModel.save."
        )


def check_compatible(path: Path, metadata: dict[str, str]) -> None:
    """Refuse a checkpoint of a newer format or storm_sc release than the installed one."""
    from storm_sc import __version__

    try:
        version = int(metadata.get("format_version", ""))
    except ValueError as err:
        raise CheckpointError(
            f"{path}: unreadable checkpoint format version {metadata.get('format_version')!r}."
        ) from err
    written_by = metadata.get("storm_sc_version", "unknown")
    written, installed = _release(written_by), _release(__version__)
    if written is None:
        # StormModel.save always records it: the header was made or edited by other means
        logger.warning(
            "%s does not say which storm_sc wrote it (storm_sc_version %r): it cannot be checked against this "
            "storm_sc (%s) and may not load or behave as its author's did. Save it again with StormModel.save.",
            path,
            written_by,
            __version__,
        )
    if version > FORMAT_VERSION:
        raise IncompatibleCheckpointError(
            f"{path} uses checkpoint format {version}, written by storm_sc {written_by}; this storm_sc ({__version__}) "
            f"reads format {FORMAT_VERSION} and older. Upgrade storm_sc."
        )
    # a source tree run without installing has no version to compare (0.0.0+unknown): its code is whatever it is
    if not __version__.endswith("+unknown") and None not in (written, installed) and written > installed:
        raise IncompatibleCheckpointError(
            f"{path} was written by storm_sc {written_by}, newer than the installed {__version__}; its architecture "
            "may rely on code this version lacks. Upgrade storm_sc."
        )
