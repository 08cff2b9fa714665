"""A tiny Space Ranger Visium HD output folder, written file by file as ``spatialdata_io.visium_hd`` reads it.

The layout follows Space Ranger 3/4 ``outs/`` (names and keys from ``spatialdata_io._constants.VisiumHDKeys``)::

    feature_slice.h5                      attrs["metadata_json"]: hd_layout_json (file_format 1.0), transform_matrices
    barcode_mappings.parquet              2 um bin -> 8 um bin, 16 um bin, cell
    microscope_image/tissue_image.tif     the full-resolution H&E (given to Space Ranger, not written by it)
    spatial/                              scalefactors_json.json, tissue_hires_image.png, tissue_lowres_image.png,
                                          cytassist_image.tiff
    binned_outputs/square_XXXum/          filtered_/raw_feature_bc_matrix.h5 (10x HDF5 matrix format)
        spatial/                          tissue_positions.parquet, scalefactors_json.json (+ the images)
    segmented_outputs/                    filtered_feature_cell_matrix.h5, cell_segmentations.geojson,
        spatial/scalefactors_json.json

The capture area is a grid of ``N_2UM x N_2UM`` 2 um bins; 8 um and 16 um bins are blocks of 4 x 4 and 8 x 8 of them
and their counts are the sums of their 2 um bins' counts, as Space Ranger bins them. Bin centres are placed in the
full-resolution image by ``SPOT_TO_PX`` (spot column/row -> pixel x/y: ``MPP`` um per pixel, rotated a little as
real slides are), the same matrix written to ``feature_slice.h5`` as ``spot_colrow_to_microscope_colrow``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
import tifffile
from PIL import Image

from tests.io._tenx_h5 import write_10x_h5

N_2UM = 40  # 2 um bins per side of the capture area (80 um)
BIN_SIZES = (2, 8, 16)
MPP = 0.2738  # microns per full-resolution pixel, as a 40x objective gives
HIRES_SCALEF = 0.5
LOWRES_SCALEF = 0.05
IMAGE_SIDE_PX = 720  # full-resolution image: ~197 um, the capture area in the middle
ROTATION_DEG = 0.7
CYTASSIST_UM_PER_PX = 5.0
GENES = {  # real human symbols with their Ensembl ids (GRCh38), all in the reference model's vocabulary
    "ACTB": "ENSG00000075624",
    "GAPDH": "ENSG00000111640",
    "EPCAM": "ENSG00000119888",
    "PTPRC": "ENSG00000081237",
    "COL1A1": "ENSG00000108821",
    "VIM": "ENSG00000026025",
    "KRT8": "ENSG00000170421",
    "KRT18": "ENSG00000111057",
    "CD74": "ENSG00000019582",
    "B2M": "ENSG00000166710",
    "TMSB4X": "ENSG00000205542",
    "MGP": "ENSG00000111341",
    "SPARC": "ENSG00000113140",
    "LYZ": "ENSG00000090382",
    "CD3E": "ENSG00000198851",
    "ACTA2": "ENSG00000107796",
    "DCN": "ENSG00000011465",
    "COL1A2": "ENSG00000164692",
    "KRT19": "ENSG00000171345",
    "CD68": "ENSG00000129226",
}
BACKGROUND_RGB = (242, 238, 244)


def _spot_to_px() -> np.ndarray:
    """``3 x 3``: 2 um spot (column, row) -> full-resolution pixel (x, y); spot (0, 0) is a 2 um bin's centre."""
    t = np.deg2rad(ROTATION_DEG)
    s = 2.0 / MPP
    side = (N_2UM - 1) * s
    tx = ty = (IMAGE_SIDE_PX - side) / 2.0
    return np.array([[s * np.cos(t), -s * np.sin(t), tx], [s * np.sin(t), s * np.cos(t), ty], [0.0, 0.0, 1.0]])


SPOT_TO_PX = _spot_to_px()


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return xy @ m[:2, :2].T + m[:2, 2]


def _in_tissue_2um(cols: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The tissue: an ellipse over most of the capture area (its corners are bare glass), in 2 um spot units."""
    c = (N_2UM - 1) / 2.0
    return ((cols - c) / (0.62 * N_2UM)) ** 2 + ((rows - c) / (0.56 * N_2UM)) ** 2 <= 1.0


def _barcode(bin_um: int, row: int, col: int) -> str:
    return f"s_{bin_um:03}um_{row:05}_{col:05}-1"


def _write_10x_h5(path: Path, counts: sp.csr_matrix, barcodes: list[str], *, chemistry: str) -> None:
    attrs = {
        "chemistry_description": chemistry,
        "filetype": "matrix",
        "library_ids": np.array([b"hdtest"]),
        "original_gem_groups": np.array([1], dtype=np.int64),
        "software_version": "spaceranger-3.1.2",
        "version": 2,
    }
    write_10x_h5(path, counts, barcodes, GENES, attrs=attrs, genome="GRCh38", dtype=np.int32)


def _scalefactors(bin_um: float) -> dict:
    return {
        "spot_diameter_fullres": bin_um / MPP,
        "bin_size_um": float(bin_um),
        "microns_per_pixel": MPP,
        "regist_target_img_scalef": HIRES_SCALEF,
        "tissue_lowres_scalef": LOWRES_SCALEF,
        "fiducial_diameter_fullres": 1.0 + 164.0 / MPP,
        "tissue_hires_scalef": HIRES_SCALEF,
    }


def _he_image(rng: np.random.Generator) -> np.ndarray:
    """``(y, x, 3)`` uint8 H&E-like image: light glass, pink tissue with purple nuclei over the tissue ellipse."""
    yy, xx = np.mgrid[0:IMAGE_SIDE_PX, 0:IMAGE_SIDE_PX].astype(np.float64)
    spot = _apply(np.linalg.inv(SPOT_TO_PX), np.column_stack([xx.ravel(), yy.ravel()]))
    tissue = _in_tissue_2um(spot[:, 0], spot[:, 1]).reshape(xx.shape)
    img = np.empty((*xx.shape, 3), dtype=np.float64)
    img[:] = BACKGROUND_RGB
    img[tissue] = (222, 165, 205)  # eosin
    ty, tx = np.nonzero(tissue)
    pick = rng.choice(len(tx), size=220, replace=False)
    radius_px = 2.5 / MPP
    for cx, cy in zip(tx[pick], ty[pick], strict=True):  # hematoxylin-stained nuclei
        y0, y1 = int(max(cy - radius_px, 0)), int(min(cy + radius_px + 1, IMAGE_SIDE_PX))
        x0, x1 = int(max(cx - radius_px, 0)), int(min(cx + radius_px + 1, IMAGE_SIDE_PX))
        disk = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= radius_px**2
        img[y0:y1, x0:x1][disk] = (115, 70, 150)
    img += rng.normal(0.0, 4.0, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _counts_2um(rng: np.random.Generator, cols: np.ndarray, rows: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Sparse integer counts of the 2 um bins; epithelial genes on the left of the tissue, stromal on the right."""
    n_genes = len(GENES)
    base = rng.uniform(0.01, 0.08, n_genes)
    left = cols < N_2UM / 2
    epi = np.isin(list(GENES), ["EPCAM", "KRT8", "KRT18", "KRT19"])
    stroma = np.isin(list(GENES), ["COL1A1", "COL1A2", "DCN", "VIM", "SPARC", "ACTA2"])
    lam = np.tile(base, (len(cols), 1))
    lam[np.ix_(left, epi)] *= 6.0
    lam[np.ix_(~left, stroma)] *= 6.0
    lam[:, list(GENES).index("ACTB")] = 0.3
    lam[~tissue] *= 0.05  # a little ambient RNA off tissue
    return rng.poisson(lam).astype(np.int64)


def _cells(
    rng: np.random.Generator, cols: np.ndarray, rows: np.ndarray, tissue: np.ndarray, n_cells: int
) -> list[np.ndarray]:
    """Segmented cells: non-overlapping 5 x 5 blocks of in-tissue 2 um bins (10 um cells); member bin indices."""
    taken = np.zeros(len(cols), dtype=bool)
    index = {(r, c): i for i, (r, c) in enumerate(zip(rows, cols, strict=True))}
    out = []
    for r0, c0 in rng.permutation([(r, c) for r in range(0, N_2UM - 5) for c in range(0, N_2UM - 5)]):
        members = np.array([index[(r0 + dr, c0 + dc)] for dr in range(5) for dc in range(5)])
        if tissue[members].all() and not taken[members].any():
            taken[members] = True
            out.append(members)
            if len(out) == n_cells:
                break
    return out


def write_visium_hd(
    root: Path,
    *,
    full_image: bool = True,
    cells: bool = True,
    n_cells: int = 10,
    seed: int = 0,
) -> dict:
    """Write the Space Ranger Visium HD output folder into ``root``; return the truth it was made from.

    The returned dict holds, per bin size ``b``: ``counts[b]`` (filtered bins x genes), ``barcodes[b]``,
    ``centers_px[b]`` (``(x, y)`` full-resolution pixels) and ``array_rc[b]``; plus ``cell_counts`` and
    ``cell_ids`` when ``cells``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    spatial = root / "spatial"
    spatial.mkdir(parents=True)

    rows2, cols2 = (a.ravel() for a in np.mgrid[0:N_2UM, 0:N_2UM])
    tissue2 = _in_tissue_2um(cols2, rows2)
    counts2 = _counts_2um(rng, cols2, rows2, tissue2)
    he = _he_image(rng)

    # --- images: full resolution (microscope), hires/lowres (Space Ranger's downsamples), CytAssist capture ----
    if full_image:
        (root / "microscope_image").mkdir()
        tifffile.imwrite(root / "microscope_image" / "tissue_image.tif", he, photometric="rgb")
    for name, scalef in (("tissue_hires_image.png", HIRES_SCALEF), ("tissue_lowres_image.png", LOWRES_SCALEF)):
        side = round(IMAGE_SIDE_PX * scalef)
        Image.fromarray(he).resize((side, side), Image.Resampling.LANCZOS).save(spatial / name)
    # CytAssist: a coarse, differently framed capture of the slide; pixel (x, y) -> spot (col, row) by an affine
    cyt_side = 48
    cyt_to_spot = np.array(
        [[CYTASSIST_UM_PER_PX / 2.0, 0.0, -20.0], [0.0, CYTASSIST_UM_PER_PX / 2.0, -22.0], [0, 0, 1]]
    )
    cyt_px = np.column_stack([a.ravel() for a in np.mgrid[0:cyt_side, 0:cyt_side][::-1]]).astype(np.float64)
    cyt_in_he = np.clip(np.round(_apply(SPOT_TO_PX @ cyt_to_spot, cyt_px)).astype(int), 0, IMAGE_SIDE_PX - 1)
    cyt = he[cyt_in_he[:, 1], cyt_in_he[:, 0]].reshape(cyt_side, cyt_side, 3)
    tifffile.imwrite(spatial / "cytassist_image.tiff", cyt, photometric="rgb")
    (spatial / "scalefactors_json.json").write_text(json.dumps(_scalefactors(2)))

    # --- feature_slice.h5: the reader only needs its metadata (file format, CytAssist/microscope registration) --
    hd_layout = {
        "file_format": "1.0",
        "schema_version": "1.0",
        "slide_uuid": "H1-TEST0001",
        "slide_design": "visium_hd_v1",
        "num_rows": N_2UM,
        "num_cols": N_2UM,
        "spot_pitch": 2.0,
        "transform": np.eye(3).ravel().tolist(),
    }
    metadata = {
        "sample_id": "hdtest",
        "slide_name": "H1-TEST0001",
        "spaceranger_version": "3.1.2",
        "hd_layout_json": json.dumps(hd_layout),
        "transform_matrices": {
            "cytassist_colrow_to_spot_colrow": cyt_to_spot.tolist(),
            "spot_colrow_to_cytassist_colrow": np.linalg.inv(cyt_to_spot).tolist(),
            "microscope_colrow_to_spot_colrow": np.linalg.inv(SPOT_TO_PX).tolist(),
            "spot_colrow_to_microscope_colrow": SPOT_TO_PX.tolist(),
        },
    }
    with h5py.File(root / "feature_slice.h5", "w") as f:
        f.attrs["metadata_json"] = json.dumps(metadata)
        umis = f.create_group("umis/total")  # 2 um bins' total UMIs, (row, col) sparse as Space Ranger stores them
        umis.create_dataset("row", data=rows2.astype(np.int32))
        umis.create_dataset("col", data=cols2.astype(np.int32))
        umis.create_dataset("data", data=counts2.sum(axis=1).astype(np.uint32))

    # --- binned outputs ---------------------------------------------------------------------------------------
    truth: dict = {"counts": {}, "barcodes": {}, "centers_px": {}, "array_rc": {}}
    mapping = pd.DataFrame({"square_002um": [_barcode(2, r, c) for r, c in zip(rows2, cols2, strict=True)]})
    for bin_um in BIN_SIZES:
        k = bin_um // 2  # 2 um bins per side of this bin
        n = N_2UM // k
        rows, cols = (a.ravel() for a in np.mgrid[0:n, 0:n])
        owner = (rows2 // k) * n + cols2 // k  # which bin of this size each 2 um bin belongs to
        agg = sp.csr_matrix((np.ones(len(owner)), (owner, np.arange(len(owner)))), shape=(n * n, len(owner)))
        counts = np.asarray(agg @ (counts2 * tissue2[:, None]), dtype=np.int64)  # filtered 2 um bins, summed
        raw = np.asarray(agg @ counts2, dtype=np.int64)
        in_tissue = np.asarray(agg @ tissue2.astype(float)).ravel() > 0  # any 2 um bin under tissue
        centers = _apply(SPOT_TO_PX, np.column_stack([cols * k + (k - 1) / 2.0, rows * k + (k - 1) / 2.0]))
        barcodes = [_barcode(bin_um, r, c) for r, c in zip(rows, cols, strict=True)]
        mapping[f"square_{bin_um:03}um"] = np.array(barcodes)[owner]

        folder = root / "binned_outputs" / f"square_{bin_um:03}um"
        (folder / "spatial").mkdir(parents=True)
        keep = np.flatnonzero(in_tissue)
        _write_10x_h5(
            folder / "filtered_feature_bc_matrix.h5",
            sp.csr_matrix(counts[keep]),
            [barcodes[i] for i in keep],
            chemistry="Visium HD v1",
        )
        _write_10x_h5(folder / "raw_feature_bc_matrix.h5", sp.csr_matrix(raw), barcodes, chemistry="Visium HD v1")
        positions = pd.DataFrame(
            {
                "barcode": barcodes,
                "in_tissue": in_tissue.astype(np.int32),
                "array_row": rows.astype(np.int32),
                "array_col": cols.astype(np.int32),
                "pxl_row_in_fullres": centers[:, 1],
                "pxl_col_in_fullres": centers[:, 0],
            }
        )
        positions.to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(_scalefactors(bin_um)))
        for name in ("tissue_hires_image.png", "tissue_lowres_image.png", "cytassist_image.tiff"):
            shutil.copyfile(spatial / name, folder / "spatial" / name)
        truth["counts"][bin_um] = counts[keep]
        truth["barcodes"][bin_um] = [barcodes[i] for i in keep]
        truth["centers_px"][bin_um] = centers[keep]
        truth["array_rc"][bin_um] = np.column_stack([rows, cols])[keep]

    # --- segmented cells (Space Ranger 4): polygons in full-resolution pixels, counts summed over their bins ----
    mapping["cell_id"] = pd.array([None] * len(mapping), dtype="string")
    if cells:
        seg = root / "segmented_outputs"
        (seg / "spatial").mkdir(parents=True)
        members = _cells(rng, cols2, rows2, tissue2, n_cells)
        ids = [f"cellid_{i + 1:09}-1" for i in range(len(members))]
        cell_counts = np.stack([counts2[m].sum(axis=0) for m in members])
        _write_10x_h5(
            seg / "filtered_feature_cell_matrix.h5", sp.csr_matrix(cell_counts), ids, chemistry="Visium HD v1"
        )
        features = []
        for i, m in enumerate(members):
            c0, r0 = cols2[m].min() - 0.5, rows2[m].min() - 0.5
            ring = np.array([[c0, r0], [c0 + 5, r0], [c0 + 5, r0 + 5], [c0, r0 + 5], [c0, r0]])
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [_apply(SPOT_TO_PX, ring).tolist()]},
                    "properties": {"cell_id": i + 1},
                }
            )
            mapping.loc[m, "cell_id"] = ids[i]
        (seg / "cell_segmentations.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        (seg / "spatial" / "scalefactors_json.json").write_text(json.dumps(_scalefactors(2)))
        truth["cell_counts"], truth["cell_ids"] = cell_counts, ids
    mapping["in_cell"] = mapping["cell_id"].notna()
    mapping["in_nucleus"] = False
    mapping.to_parquet(root / "barcode_mappings.parquet", index=False)
    return truth
