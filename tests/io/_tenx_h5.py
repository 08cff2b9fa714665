"""The 10x feature-barcode matrix HDF5 (``matrix/``, CSC by barcode) that Space Ranger and Xenium write."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.sparse as sp


def write_10x_h5(
    path: Path,
    counts: Any,
    barcodes: list[str],
    genes: Mapping[str, str],
    *,
    attrs: Mapping[str, Any],
    genome: str,
    dtype: type = np.int32,
) -> None:
    """Write ``counts`` (barcodes x genes) as ``scanpy.read_10x_h5`` reads a CellRanger v3+ matrix.

    ``genes`` maps each symbol to its Ensembl id (the ``name`` and ``id`` datasets); ``attrs`` are the file's
    attributes (software version, chemistry, ...), which the readers of the platforms look at.
    """
    csc = sp.csr_matrix(counts).T.tocsc()  # features x barcodes, stored by barcode column
    csc.sort_indices()
    n_features = len(genes)
    with h5py.File(path, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        m.create_dataset("data", data=csc.data.astype(dtype))
        m.create_dataset("indices", data=csc.indices.astype(np.int64))
        m.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([n_features, len(barcodes)], dtype=np.int32))
        feats = m.create_group("features")
        feats.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feats.create_dataset("feature_type", data=np.array([b"Gene Expression"] * n_features))
        feats.create_dataset("genome", data=np.array([genome.encode()] * n_features))
        feats.create_dataset("id", data=np.array(list(genes.values()), dtype="S"))
        feats.create_dataset("name", data=np.array(list(genes), dtype="S"))
