"""Fixtures for the plot tests: real small models, analysed toy slides, and a display probe for napari."""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib

# Figures are rendered off-screen; under xvfb-run a display exists and matplotlib would otherwise pick Qt.
matplotlib.use("Agg", force=True)

import matplotlib.pyplot as plt
import pytest

import storm_sc as st

N_OBS = 256  # a 16 x 16 grid: a square toy image (800 x 800 px), so that it can be rotated onto itself
PREDICTED_GENES = ["gene_0002", "gene_0003", "gene_0010", "gene_0021"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="session")
def pl_model():
    """A storm-tiny model really trained (briefly) on a generated slide."""
    train = st.datasets.toy(n_obs=N_OBS, n_genes=40, n_domains=3, seed=11)
    model = st.models.StormModel("storm-tiny", train["table"].var_names, seed=0)
    model.fit([train], max_epochs=2, seed=0, verbose=False)
    return model


@pytest.fixture(scope="session")
def slides(pl_model):
    """Two generated slides embedded and given domains together, each with predicted expression of a few genes."""
    out = [st.datasets.toy(n_obs=N_OBS, n_genes=40, n_domains=3, seed=s) for s in (3, 4)]
    st.tl.storm_embed(out, pl_model, verbose=False)
    st.tl.storm_domains(out, n_domains=3)
    for sdata in out:
        st.tl.predict_expression(sdata, pl_model, genes=PREDICTED_GENES, verbose=False)
    return out


@pytest.fixture(scope="session")
def sdata(slides):
    return slides[0]


_PROBE = """
import numpy as np, napari
viewer = napari.Viewer(show=False)
viewer.add_image(np.full((20, 20, 3), 200, dtype=np.uint8), rgb=True)
shot = viewer.screenshot(canvas_only=False, flash=False)
viewer.close()
assert shot[..., :3].max() > 0, "blank screenshot"
"""


@pytest.fixture(scope="session")
def napari_display() -> None:
    """Skip unless napari is installed and can draw (an X display with OpenGL, e.g. under ``xvfb-run -a``).

    The probe runs in a subprocess: Qt aborts the whole process when it finds no usable platform.
    """
    pytest.importorskip("napari", reason='napari is not installed (pip install "storm-sc[napari]")')
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.skip("no display for napari: run the tests under `xvfb-run -a pytest ...`")
    try:
        probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("napari could not open a viewer within 180 s on this display")
    if probe.returncode != 0:
        tail = (probe.stderr or probe.stdout).strip().splitlines()[-3:]
        pytest.skip(f"napari cannot draw on this display (no Qt platform or OpenGL context): {' | '.join(tail)}")
