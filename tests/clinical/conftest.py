"""Slides, features and cohorts shared by the clinical tests (built once per session, in temporary folders)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import storm_sc as st
from storm_sc.tl._clinical import slide_features
from tests._paths import DATA_DIR
from tests.wsi._slides import PINK, PURPLE, glass, texture, write_pyramid

GENES = [f"G{i}" for i in range(12)]


@pytest.fixture(scope="session")
def tiny_model():
    """A real, untrained storm-tiny: its random morphology features are a fixed non-linear map of the pixels."""
    return st.models.StormModel("storm-tiny", GENES, seed=0)


def textured_slide(fraction: float, rng: np.random.Generator, *, cells: int = 6, cell_px: int = 32) -> np.ndarray:
    """Glass with a block of tissue cells, ``fraction`` of them purple (haematoxylin-rich), the rest pink."""
    size = cells * cell_px + 2 * cell_px
    rgb = glass((size, size), rng)
    for r in range(cells):
        for c in range(cells):
            colour = PURPLE if rng.random() < fraction else PINK
            y0, x0 = (r + 1) * cell_px, (c + 1) * cell_px
            rgb[y0 : y0 + cell_px, x0 : x0 + cell_px] = texture((cell_px, cell_px), colour, rng)
    return rgb


@pytest.fixture(scope="session")
def generated_cohort(tmp_path_factory, tiny_model):
    """12 patients (4 with two slides) of generated slides at 3.5 um/px, their features and a cohort table."""
    root = tmp_path_factory.mktemp("generated_cohort")
    rng = np.random.default_rng(7)
    rows = []
    fractions = np.linspace(0.1, 0.9, 12)
    rng.shuffle(fractions)
    tmb = fractions + rng.normal(0, 0.2, len(fractions))
    for p, f in enumerate(fractions):
        for s in range(2 if p < 4 else 1):
            path = write_pyramid(root / f"G{p:02d}_{s}.tif", textured_slide(f, rng), 3.5, levels=1)
            rows.append({"slide_id": f"G{p:02d}_{s}", "patient_id": f"G{p:02d}", "path": str(path),
                         "response": int(f > 0.5), "time": float(20 * (1.1 - f)), "event": int(p % 3 != 0),
                         "TMB": float(tmb[p])})  # fmt: skip
    cohort = pd.DataFrame(rows)
    feats = slide_features(cohort[["slide_id", "path"]], tiny_model, out_dir=root / "features", device="cpu",
                           verbose=False)  # fmt: skip
    return cohort, feats


@pytest.fixture(scope="session")
def generated_features_without_genes(generated_cohort, tiny_model, tmp_path_factory):
    """The generated cohort's slide features computed with ``genes=[]``: embeddings only."""
    cohort, _ = generated_cohort
    return slide_features(cohort[["slide_id", "path"]], tiny_model, out_dir=tmp_path_factory.mktemp("no_genes"),
                          genes=[], device="cpu", verbose=False)  # fmt: skip


@pytest.fixture(scope="session")
def semi_synthetic(tmp_path_factory, tiny_model):
    """The semi-synthetic cohort from real H&E crops (tests/clinical/_synthetic.py) and its slide features."""
    if not (DATA_DIR / "her2st").exists() or not (DATA_DIR / "visium_ffpe_villacampa2021").exists():
        pytest.skip(f"real data not available under {DATA_DIR} (her2st, visium_ffpe_villacampa2021)")
    from tests.clinical._synthetic import make_cohort

    root = tmp_path_factory.mktemp("semi_synthetic")
    cohort = make_cohort(DATA_DIR, root / "slides", n_patients=40, n_double=8, seed=0)
    feats = slide_features(cohort[["slide_id", "path"]], tiny_model, out_dir=root / "features", device="cpu",
                           verbose=False)  # fmt: skip
    return cohort, feats
