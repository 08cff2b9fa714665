"""A semi-synthetic cohort: whole slides assembled from real H&E crops, with outcomes driven by a known property.

Two real tissue types are cut into 112 um crops: HER2+ breast cancer (her2st section C2 full-resolution H&E, at
the spot positions) and mouse brain (Visium FFPE hires H&E, at in-tissue spots). Each synthetic slide is a small
pyramidal TIFF whose tissue (an ellipse on glass) is a mosaic of those crops: a fraction ``f`` of the cells comes
from breast cancer, the rest from brain. The patient's outcome depends on ``f`` only, so a pipeline that reads
the tiles correctly and aggregates them recovers it; the real files are only read, never copied.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tests.wsi._slides import glass, write_pyramid

CELL_UM = 112.0
SLIDE_MPP = 1.75  # level 0; level 1 (3.5 um/px) is what a 32 px, 112 um tile model reads
CELL_PX = round(CELL_UM / SLIDE_MPP)  # 64
HER2ST_MPP = 200.0 / 256.0  # legacy ST: 200 um spot pitch spans ~256 px of the full-resolution image
# Tissue types cut from the Visium FFPE hires images (Villacampa et al. 2021), by folder under the data set.
VISIUM_TISSUES = {"brain": "mousebrain/V10F24-078_A1", "lung": "lung_SARS-CoV-2/V10F24-110_C1"}


def _crop(img: Image.Image, cx: float, cy: float, side: float, out: int) -> np.ndarray:
    box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    return np.asarray(img.resize((out, out), Image.Resampling.BILINEAR, box=box))


def _visium_crops(spatial: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` crops of 112 um around in-tissue spots of a Visium hires image, with a little jitter."""
    sf = json.loads((spatial / "scalefactors_json.json").read_text())
    hires_mpp = 55.0 / sf["spot_diameter_fullres"] / sf["tissue_hires_scalef"]
    pos = pd.read_csv(spatial / "tissue_positions_list.csv", header=None)
    pos = pos[pos[1] == 1]
    xy = pos[[5, 4]].to_numpy(dtype=np.float64) * sf["tissue_hires_scalef"]
    img = Image.open(spatial / "tissue_hires_image.png").convert("RGB")
    side = CELL_UM / hires_mpp
    pick = rng.integers(0, len(xy), n)
    jitter = rng.uniform(-0.3, 0.3, (n, 2)) * side
    return np.stack([_crop(img, *(xy[i] + j), side, CELL_PX) for i, j in zip(pick, jitter, strict=True)])


def crop_pools(data_dir: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` real H&E crops of 112 um per tissue type, as ``(n, CELL_PX, CELL_PX, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    pools = {}
    # Breast cancer: her2st C2, decoded at half resolution straight from the JPEG.
    jpg = data_dir / "her2st" / "data" / "ST-imgs" / "C" / "C2" / "5714_HE_BT_C2.jpg"
    spots = pd.read_csv(data_dir / "her2st" / "data" / "ST-spotfiles" / "C2_selection.tsv", sep="\t")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # a 92-megapixel scan, read on purpose
        with Image.open(jpg) as im:
            full = im.size
            im.draft("RGB", (full[0] // 2, full[1] // 2))
            img = im.convert("RGB")
    scale = img.size[0] / full[0]
    side = CELL_UM / HER2ST_MPP * scale
    xy = spots[["pixel_x", "pixel_y"]].to_numpy() * scale
    pick = rng.integers(0, len(xy), n)
    jitter = rng.uniform(-0.3, 0.3, (n, 2)) * side
    pools["breast"] = np.stack([_crop(img, *(xy[i] + j), side, CELL_PX) for i, j in zip(pick, jitter, strict=True)])
    for name, section in VISIUM_TISSUES.items():
        pools[name] = _visium_crops(data_dir / "visium_ffpe_villacampa2021" / section / "spatial", n, rng)
    return pools


def mosaic_slide(pools: dict[str, np.ndarray], fraction: float, rng: np.random.Generator, *, cells: int = 8,
                 margin_px: int = 16) -> tuple[np.ndarray, int, int]:  # fmt: skip
    """A slide whose tissue ellipse is a mosaic of crops, each breast with probability ``fraction``.

    Returns the pixels, the number of breast cells and the number of tissue cells.
    """
    size = cells * CELL_PX + 2 * margin_px
    rgb = glass((size, size), rng)
    ry, rx = rng.uniform(0.38, 0.5, 2) * cells
    cy, cx = (cells - 1) / 2 + rng.uniform(-0.4, 0.4, 2)
    n_breast = n_tissue = 0
    for r in range(cells):
        for c in range(cells):
            if ((r - cy) / ry) ** 2 + ((c - cx) / rx) ** 2 > 1.0:
                continue
            kind = "breast" if rng.random() < fraction else "brain"
            crop = pools[kind][rng.integers(len(pools[kind]))]
            crop = np.rot90(crop, rng.integers(4))
            y0, x0 = margin_px + r * CELL_PX, margin_px + c * CELL_PX
            rgb[y0 : y0 + CELL_PX, x0 : x0 + CELL_PX] = crop
            n_tissue += 1
            n_breast += kind == "breast"
    return rgb, n_breast, n_tissue


def make_cohort(data_dir: Path, out: Path, *, n_patients: int = 40, n_double: int = 8,
                seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Write the slides and return the cohort table (one row per slide) with the planted property per patient.

    Columns: slide_id, patient_id, path, fraction (the patient's breast-cancer fraction of tissue cells over all of
    their slides: the known property), response (1 when the fraction plus a little noise exceeds 0.5), time/event
    (exponential survival whose hazard rises with the fraction; uniform censoring), TMB (a weak, noisy clinical
    baseline).
    """
    rng = np.random.default_rng(seed)
    pools = crop_pools(data_dir, 160, seed)
    out.mkdir(parents=True, exist_ok=True)
    slides = []
    counts = np.zeros((n_patients, 2))
    for p, target in enumerate(rng.uniform(0.1, 0.9, n_patients)):
        for s in range(2 if p < n_double else 1):
            slide_id = f"P{p:02d}_S{s}"
            rgb, n_breast, n_tissue = mosaic_slide(pools, target, rng)
            counts[p] += (n_breast, n_tissue)
            slides.append((slide_id, p, write_pyramid(out / f"{slide_id}.tif", rgb, SLIDE_MPP)))
    fraction = counts[:, 0] / counts[:, 1]
    response = (fraction + rng.normal(0, 0.05, n_patients) > 0.5).astype(int)
    t_event = rng.exponential(1.0 / (0.1 * np.exp(6.0 * (fraction - 0.5))))
    t_censor = rng.uniform(2.0, 30.0, n_patients)
    tmb = fraction + rng.normal(0, 0.35, n_patients)
    return pd.DataFrame([{
        "slide_id": slide_id, "patient_id": f"P{p:02d}", "path": str(path), "fraction": fraction[p],
        "response": int(response[p]), "time": float(min(t_event[p], t_censor[p])),
        "event": int(t_event[p] <= t_censor[p]), "TMB": float(tmb[p]),
    } for slide_id, p, path in slides])  # fmt: skip


def focal_slide(pools: dict[str, np.ndarray], background: float, focus: int, rng: np.random.Generator, *,
                cells: int = 8, margin_px: int = 16) -> tuple[np.ndarray, list[tuple[float, float]], int]:  # fmt: skip
    """A slide of brain (probability ``background``) and lung crops, with one compact focus of ``focus`` breast crops.

    The focus is the ``focus`` tissue cells nearest to a random tissue cell. Returns the pixels, the centres
    ``(x, y)`` in microns of the breast cells, and the number of tissue cells.
    """
    size = cells * CELL_PX + 2 * margin_px
    rgb = glass((size, size), rng)
    ry, rx = rng.uniform(0.38, 0.5, 2) * cells
    cy, cx = (cells - 1) / 2 + rng.uniform(-0.4, 0.4, 2)
    grid = np.stack(np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij"), axis=-1).reshape(-1, 2)
    tissue = grid[((grid[:, 0] - cy) / ry) ** 2 + ((grid[:, 1] - cx) / rx) ** 2 <= 1.0]
    seed = tissue[rng.integers(len(tissue))]
    distance = np.abs(tissue - seed).sum(axis=1) + rng.uniform(0, 0.5, len(tissue))
    in_focus = np.zeros(len(tissue), dtype=bool)
    in_focus[np.argsort(distance)[:focus]] = True
    centres = []
    for (r, c), breast in zip(tissue, in_focus, strict=True):
        kind = "breast" if breast else "brain" if rng.random() < background else "lung"
        crop = np.rot90(pools[kind][rng.integers(len(pools[kind]))], rng.integers(4))
        y0, x0 = margin_px + r * CELL_PX, margin_px + c * CELL_PX
        rgb[y0 : y0 + CELL_PX, x0 : x0 + CELL_PX] = crop
        if breast:
            centres.append(((x0 + CELL_PX / 2) * SLIDE_MPP, (y0 + CELL_PX / 2) * SLIDE_MPP))
    return rgb, centres, len(tissue)


def make_focal_cohort(data_dir: Path, out: Path, *, n_patients: int = 40, focus: tuple[int, int] = (1, 3),
                      cells: tuple[int, int] = (8, 8), seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """A cohort whose outcome is a *focal* property: whether the tissue holds a small focus of breast cancer.

    Every slide is mostly brain and lung crops, mixed in a proportion drawn per patient (uniform 0.1-0.9), which
    moves the slide's mean features far more than the focus does. Half of the patients (the responders) have one
    focus of ``focus[0]``..``focus[1]`` breast crops, i.e. a few percent of their tiles; the others have none. A
    model has to find the few tiles that matter, which attention can and a mean over all tiles hardly can.

    Columns: slide_id, patient_id, path, focus (breast tiles), focus_xy_um (their centres), fraction (their share
    of the tissue), background (the brain share of the rest), response.
    """
    rng = np.random.default_rng(seed)
    pools = crop_pools(data_dir, 160, seed)
    out.mkdir(parents=True, exist_ok=True)
    response = rng.permutation(np.arange(n_patients) % 2)
    rows = []
    for p in range(n_patients):
        background = rng.uniform(0.1, 0.9)
        k = int(rng.integers(focus[0], focus[1] + 1)) if response[p] else 0
        rgb, centres, n_tissue = focal_slide(pools, background, k, rng, cells=int(rng.integers(cells[0], cells[1] + 1)))
        path = write_pyramid(out / f"F{p:02d}.tif", rgb, SLIDE_MPP)
        rows.append({"slide_id": f"F{p:02d}", "patient_id": f"F{p:02d}", "path": str(path), "focus": len(centres),
                     "focus_xy_um": centres, "fraction": len(centres) / n_tissue, "background": background,
                     "response": int(response[p])})  # fmt: skip
    return pd.DataFrame(rows)
