"""A tiny Xenium Onboard Analysis output folder with a post-Xenium H&E, written as ``spatialdata_io.xenium`` reads it.

The layout follows XOA 2.x ``outs/`` (names and keys from ``spatialdata_io._constants.XeniumKeys``)::

    experiment.xenium                         JSON specs: pixel_size (um per morphology pixel), analysis_sw_version
    cells.zarr.zip                            zarr v2 in a zip: cell_id (N x 2 uint32 prefix/suffix), cell_summary,
                                              polygon_sets/{0,1}/cell_index (no masks: labels are not read)
    cells.parquet                             cell_id, x_centroid, y_centroid (microns), areas, counts
    cell_feature_matrix.h5                    10x HDF5 feature-barcode matrix, cells x genes
    cell_boundaries.parquet                   cell_id, vertex_x, vertex_y (microns), label_id; 13 vertices per cell
    morphology_focus/morphology_focus_0000.ome.tif   DAPI, uint16, one channel
    he_image.ome.tif                          the post-Xenium H&E (RGB, ``HE_MPP`` um per pixel)
    he_imagealignment.csv                     3 x 3 affine, H&E pixel (x, y) -> morphology pixel (x, y), as Xenium
                                              Explorer exports it and ``xenium_aligned_image`` reads it

The tissue is an ellipse in microns; cells lie in it, each with a hematoxylin-stained nucleus at its centre in the H&E
and a bright nucleus in the DAPI image. ``HE_TO_MORPHOLOGY`` scales (``HE_MPP / PIXEL_SIZE``), rotates and shifts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import zarr

from tests.io._spaceranger_hd import GENES
from tests.io._tenx_h5 import write_10x_h5

PIXEL_SIZE = 0.2125  # um per morphology pixel, experiment.xenium's pixel_size
HE_MPP = 0.26  # um per H&E pixel
ROTATION_DEG = 2.5
MORPH_SHAPE = (940, 1130)  # (y, x) morphology pixels: ~200 x 240 um
HE_SHAPE = (860, 1000)  # (y, x) H&E pixels: ~224 x 260 um, covering the Xenium field
TISSUE_CENTER_UM = (120.0, 100.0)
TISSUE_AXES_UM = (95.0, 75.0)
NUCLEUS_RADIUS_UM = 3.0
CELL_RADIUS_UM = 5.5
BACKGROUND_RGB = (242, 238, 244)


def _he_to_morphology() -> np.ndarray:
    """``3 x 3``: H&E pixel (x, y) -> morphology pixel (x, y); the H&E centre lands on the tissue centre."""
    t = np.deg2rad(ROTATION_DEG)
    s = HE_MPP / PIXEL_SIZE
    lin = s * np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    he_centre = np.array([HE_SHAPE[1], HE_SHAPE[0]]) / 2.0
    shift = np.array(TISSUE_CENTER_UM) / PIXEL_SIZE - lin @ he_centre
    m = np.eye(3)
    m[:2, :2], m[:2, 2] = lin, shift
    return m


HE_TO_MORPHOLOGY = _he_to_morphology()


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ m[:2, :2].T + m[:2, 2]


def _in_tissue(xy_um: np.ndarray, margin: float = 0.0) -> np.ndarray:
    (cx, cy), (a, b) = TISSUE_CENTER_UM, TISSUE_AXES_UM
    return ((xy_um[:, 0] - cx) / (a - margin)) ** 2 + ((xy_um[:, 1] - cy) / (b - margin)) ** 2 <= 1.0


def _centroids(rng: np.random.Generator, n_cells: int) -> np.ndarray:
    """Cell centres in microns, in the tissue, at least two cell radii apart."""
    out: list[np.ndarray] = []
    (cx, cy), (a, b) = TISSUE_CENTER_UM, TISSUE_AXES_UM
    while len(out) < n_cells:
        p = rng.uniform([cx - a, cy - b], [cx + a, cy + b])
        if _in_tissue(p[None], margin=CELL_RADIUS_UM)[0] and all(
            np.linalg.norm(p - q) >= 2 * CELL_RADIUS_UM for q in out
        ):
            out.append(p)
    return np.array(out)


def _cell_ids(rng: np.random.Generator, n_cells: int) -> tuple[np.ndarray, list[str]]:
    """Xenium cell ids: uint32 prefix shown as 8 letters a-p (one per hex nibble), dataset suffix 1."""
    prefix = np.sort(rng.choice(2**24, size=n_cells, replace=False).astype(np.uint32) + np.uint32(0x0A000000))
    names = ["".join(chr(ord("a") + int(c, 16)) for c in f"{p:08x}") + "-1" for p in prefix]
    return np.column_stack([prefix, np.ones(n_cells, np.uint32)]), names


def _counts(rng: np.random.Generator, xy_um: np.ndarray) -> np.ndarray:
    """Integer counts; epithelial genes left of the tissue centre, stromal ones right of it."""
    names = list(GENES)
    lam = np.tile(rng.uniform(0.3, 2.0, len(names)), (len(xy_um), 1))
    left = xy_um[:, 0] < TISSUE_CENTER_UM[0]
    epi = np.isin(names, ["EPCAM", "KRT8", "KRT18", "KRT19"])
    stroma = np.isin(names, ["COL1A1", "COL1A2", "DCN", "VIM", "SPARC", "ACTA2"])
    lam[np.ix_(left, epi)] *= 8.0
    lam[np.ix_(~left, stroma)] *= 8.0
    return rng.poisson(lam).astype(np.int64)


def _write_cell_feature_matrix(path: Path, counts: np.ndarray, barcodes: list[str]) -> None:
    attrs = {"filetype": "matrix", "software_version": "xenium-2.0.0.10", "version": 2}
    write_10x_h5(path, counts, barcodes, GENES, attrs=attrs, genome="Unknown", dtype=np.uint32)


def _write_cells_zarr(path: Path, id_pairs: np.ndarray, summary: np.ndarray, columns: list[str]) -> None:
    store = zarr.storage.ZipStore(path, mode="w")
    group = zarr.open_group(store, mode="w", zarr_format=2)
    group.create_array("cell_id", data=id_pairs)
    group.create_array("cell_summary", data=summary, attributes={"column_names": columns})
    cell_index = np.arange(len(id_pairs), dtype=np.uint32)  # one nucleus per cell, one polygon per cell
    group.create_array("polygon_sets/0/cell_index", data=cell_index)
    group.create_array("polygon_sets/1/cell_index", data=cell_index)
    store.close()


def _disks(shape: tuple[int, int], centres_px: np.ndarray, radius_px: float) -> np.ndarray:
    """Boolean ``shape`` mask of the disks of ``radius_px`` around ``centres_px`` ((x, y) pixels)."""
    mask = np.zeros(shape, dtype=bool)
    r = int(np.ceil(radius_px))
    for cx, cy in centres_px:
        x0, y0 = max(int(cx) - r, 0), max(int(cy) - r, 0)
        x1, y1 = min(int(cx) + r + 2, shape[1]), min(int(cy) + r + 2, shape[0])
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= (xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius_px**2
    return mask


def _he_image(rng: np.random.Generator, centres_he_px: np.ndarray) -> np.ndarray:
    """``(y, x, 3)`` uint8 H&E: light glass, eosin-pink tissue (the ellipse through the alignment), purple nuclei."""
    yy, xx = np.mgrid[0 : HE_SHAPE[0], 0 : HE_SHAPE[1]].astype(np.float64)
    um = _apply(HE_TO_MORPHOLOGY, np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])) * PIXEL_SIZE
    tissue = _in_tissue(um).reshape(HE_SHAPE)
    img = np.empty((*HE_SHAPE, 3), dtype=np.float64)
    img[:] = BACKGROUND_RGB
    img[tissue] = (222, 165, 205)
    img[_disks(HE_SHAPE, centres_he_px, NUCLEUS_RADIUS_UM / HE_MPP)] = (115, 70, 150)
    img += rng.normal(0.0, 4.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def write_xenium(root: Path, *, n_cells: int = 60, seed: int = 0) -> dict:
    """Write the Xenium output folder into ``root``; return the truth it was made from.

    Keys: ``cell_ids``, ``centroids_um`` (``(x, y)``), ``counts`` (cells x genes), ``he_px`` (cell centres in H&E
    pixels, ``(x, y)``), ``he_path`` and ``alignment_path``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "morphology_focus").mkdir(parents=True)

    xy = _centroids(rng, n_cells)
    id_pairs, ids = _cell_ids(rng, n_cells)
    counts = _counts(rng, xy)
    cell_area = np.full(n_cells, np.pi * CELL_RADIUS_UM**2)
    nucleus_area = np.full(n_cells, np.pi * NUCLEUS_RADIUS_UM**2)

    specs = {
        "major_version": 5,
        "minor_version": 0,
        "run_name": "storm_sc test",
        "region_name": "tiny",
        "panel_name": "tiny panel",
        "panel_num_targets_predesigned": len(GENES),
        "analysis_sw_version": "xenium-2.0.0.10",
        "pixel_size": PIXEL_SIZE,
    }
    (root / "experiment.xenium").write_text(json.dumps(specs, indent=2))

    columns = [
        "cell_centroid_x",
        "cell_centroid_y",
        "cell_area",
        "nucleus_centroid_x",
        "nucleus_centroid_y",
        "nucleus_area",
        "z_level",
        "nucleus_count",
    ]
    summary = np.column_stack([xy, cell_area, xy, nucleus_area, np.zeros(n_cells), np.ones(n_cells)])
    _write_cells_zarr(root / "cells.zarr.zip", id_pairs, summary, columns)

    total = counts.sum(axis=1)
    pd.DataFrame(
        {
            "cell_id": ids,
            "x_centroid": xy[:, 0],
            "y_centroid": xy[:, 1],
            "transcript_counts": total.astype(np.int64),
            "control_probe_counts": np.zeros(n_cells, np.int64),
            "control_codeword_counts": np.zeros(n_cells, np.int64),
            "total_counts": total.astype(np.int64),
            "cell_area": cell_area,
            "nucleus_area": nucleus_area,
            "nucleus_count": np.ones(n_cells, np.uint32),
            "segmentation_method": pd.Categorical(["Segmented by nucleus expansion of 5.0um"] * n_cells),
        }
    ).to_parquet(root / "cells.parquet", index=False)
    _write_cell_feature_matrix(root / "cell_feature_matrix.h5", counts, ids)

    # 13 vertices per polygon, the last repeating the first, as XOA 2.x writes cell boundaries
    angles = np.linspace(0.0, 2 * np.pi, 13)
    angles[-1] = 0.0
    ring = CELL_RADIUS_UM * np.column_stack([np.cos(angles), np.sin(angles)])
    vertices = (xy[:, None, :] + ring[None]).reshape(-1, 2).astype(np.float32)
    pd.DataFrame(
        {
            "cell_id": np.repeat(ids, len(angles)),
            "vertex_x": vertices[:, 0],
            "vertex_y": vertices[:, 1],
            "label_id": np.repeat(np.arange(1, n_cells + 1, dtype=np.uint32), len(angles)),
        }
    ).to_parquet(root / "cell_boundaries.parquet", index=False)

    dapi = rng.normal(120.0, 15.0, MORPH_SHAPE)
    dapi[_disks(MORPH_SHAPE, xy / PIXEL_SIZE, NUCLEUS_RADIUS_UM / PIXEL_SIZE)] += 3000.0
    tifffile.imwrite(
        root / "morphology_focus" / "morphology_focus_0000.ome.tif",
        np.clip(dapi, 0, 65535).astype(np.uint16),
        metadata={"axes": "YX", "Channel": {"Name": "DAPI"}, "PhysicalSizeX": PIXEL_SIZE, "PhysicalSizeY": PIXEL_SIZE},
    )

    he_px = _apply(np.linalg.inv(HE_TO_MORPHOLOGY), xy / PIXEL_SIZE)
    he_path, alignment_path = root / "he_image.ome.tif", root / "he_imagealignment.csv"
    tifffile.imwrite(
        he_path,
        _he_image(rng, he_px),
        photometric="rgb",
        metadata={"axes": "YXS", "PhysicalSizeX": HE_MPP, "PhysicalSizeY": HE_MPP},
    )
    pd.DataFrame(HE_TO_MORPHOLOGY).to_csv(alignment_path, header=False, index=False)
    return {
        "cell_ids": ids,
        "centroids_um": xy,
        "counts": counts,
        "he_px": he_px,
        "he_path": he_path,
        "alignment_path": alignment_path,
    }
