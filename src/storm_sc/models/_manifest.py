"""What a model's training manifest says about the slides it saw: the same slide, found again."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def array_digest(*arrays: Any) -> str:
    """sha256 of arrays' dtypes, shapes and bytes: what a training manifest records of the data it saw."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}|{a.shape}|".encode())
        h.update(memoryview(a.reshape(-1)).cast("B"))
    return h.hexdigest()


def training_slide_matching(
    manifest: dict[str, Any],
    centers_um: np.ndarray,
    *,
    source: dict[str, Any] | None = None,
    library_id: str | None = None,
) -> str | None:
    """Name of the slide of a model's training manifest that this slide is, or ``None``.

    Tells whether a score on a slide is in-sample. ``source`` is the provenance the manifest records (e.g.
    ``{"loader": "her2st", "args": {"section": "C2", "image": True}}``): the same loader and arguments are the same
    slide. Otherwise the positions' sha256 is compared, which a change of the last float bit defeats (the
    reference's C2 and C4 positions hash differently today, cause not traced); with ``library_id``, a training
    slide of that name and the same number of observations counts as the same slide too.

    Examples
    --------
    >>> manifest = {"datasets": [{"name": "her2st(section=C2)", "library_id": "C2", "n_obs": 2}]}
    >>> training_slide_matching(manifest, np.zeros((2, 2)), library_id="C2")
    'her2st(section=C2)'
    >>> training_slide_matching(manifest, np.zeros((3, 2)), library_id="C2") is None
    True
    """
    # the slides a fine-tuned model's base was trained on are in-sample for it too
    entries = [*manifest.get("datasets", []), *manifest.get("parent", {}).get("datasets", [])]
    if source is not None:
        for entry in entries:
            if entry.get("source") == source:
                return str(entry.get("name"))
    digest = array_digest(np.asarray(centers_um))
    for entry in entries:
        if entry.get("sha256", {}).get("centers_um") == digest:
            return str(entry.get("name"))
    if library_id is not None:
        for entry in entries:
            if entry.get("library_id") == library_id and entry.get("n_obs") == len(centers_um):
                return str(entry.get("name"))
    return None


def trained_from(model: Any) -> dict[str, Any] | None:
    """The lineage a model about to be trained keeps: its name, weights digest and every slide it learned from.

    ``None`` for a model that never learned anything (fresh weights, no manifest). A fine-tuned release otherwise
    forgot it was the release: results recorded only "(in-memory)", and its base's training slides were not
    recognised as in-sample.

    Examples
    --------
    >>> import storm_sc as st
    >>> trained_from(st.models.StormModel("storm-tiny", ["A", "B"], seed=0)) is None
    True
    """
    manifest = model.manifest or {}
    if model.pretrained_name is None and not manifest.get("datasets"):
        return None
    parent = manifest.get("parent", {})
    return {
        "name": model.pretrained_name or parent.get("name"),
        "weights_sha256": model.weights_digest(),
        "datasets": [*manifest.get("datasets", []), *parent.get("datasets", [])],
    }
