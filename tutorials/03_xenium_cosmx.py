# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # One model across platforms: Xenium, CosMx and Xenium with H&E
#
# Imaging-based platforms measure single cells with targeted gene panels that differ from platform to platform
# and from panel to panel. STORM works with any of them: each table's genes are aligned to the model's gene
# vocabulary (genes outside a panel are masked, not imputed), positions are always in microns, and the H&E
# modality is used where a slide has an aligned H&E image and left out where it has none.
#
# Here one model, the reference checkpoint bundled with storm_sc, embeds three small real datasets at once:
#
# | dataset | platform | what it is |
# |---|---|---|
# | `st.datasets.xenium_toy()` | 10x Xenium | 526 cells x 27 genes, a small public subset; DAPI images only (no H&E) |
# | `st.datasets.cosmx_lung12()` | NanoString CosMx | 120 cells x 980 genes from two fields of view of lung FFPE; immunofluorescence, no H&E |
# | `st.datasets.xenium_lung_he()` | 10x Xenium + H&E (HEST format) | 200 cells x 338 genes of fibrotic lung with an H&E crop |
#
# These are small fixtures of different tissues, chosen because they are public and tiny; the point is the
# mechanics (one vocabulary, one model, one embedding space), not a biological comparison.
#
# **Model**: `storm-tiny-public-v5`, the bundled reference (`model=None` in every tool; see the model card). Of these
# three datasets only the Xenium + H&E lung crop was in its training corpus. `STORM_SC_TUTORIAL_FAST=1` (as CI
# runs it) changes nothing here: no training happens.

# %%
import os

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

import storm_sc as st

FAST = os.environ.get("STORM_SC_TUTORIAL_FAST") == "1"
N_DOMAINS = 6
SEED = 0
st.settings.progress = not FAST
print(f"storm_sc {st.__version__}; fast mode: {FAST}; data directory: {st.settings.data_dir}")

# %% [markdown]
# ## Load the three datasets and see what storm_sc finds in each
#
# `st.io.resolve` finds the table, the cells, the image (if any) and the physical scale of each `SpatialData`,
# and says why it does or does not use an image: Xenium's DAPI and CosMx's immunofluorescence are not H&E.

# %%
data = {
    "xenium_toy": st.datasets.xenium_toy(),
    "cosmx_lung12": st.datasets.cosmx_lung12(),
    "xenium_lung_he": st.datasets.xenium_lung_he(),
}
rows = {}
for name, sdata in data.items():
    slide = st.io.resolve(sdata)
    nearest, _ = cKDTree(slide.centers_um).query(slide.centers_um, k=2)
    rows[name] = {
        "platform": slide.platform,
        "cells": slide.n_obs,
        "genes": slide.table.n_vars,
        "H&E image": slide.image_key if slide.has_image else None,
        "um per px": None if slide.mpp is None else round(slide.mpp, 3),
        "median nearest-cell distance (um)": round(float(np.median(nearest[:, 1])), 1),
    }
pd.DataFrame(rows).transpose()

# %% [markdown]
# Cell centres are in microns on every platform, so a neighbourhood means the same physical distance everywhere,
# whatever the platform's pixel size. The Xenium and CosMx cells are neighbouring cells (median nearest-cell
# distance of about 13 and 6 um); the HEST lung sample holds only 200 cells spread over a crop of about
# 4 x 4 mm, so its nearest cells are about 100 um apart. That crop publishes no pixel size either: storm_sc uses a
# rough 3 um/px and says so in a warning.
#
# ## One gene vocabulary
#
# The model indexes genes by one vocabulary (symbols, case-insensitive, and Ensembl ids); aligning each table to it
# shows how much of each panel the model knows. Genes it does not know are left out and reported.

# %%
model = st.models.StormModel.from_pretrained()
vocabulary = model.vocabulary
print(model)
print(f"vocabulary: {len(vocabulary)} genes")
for name, sdata in data.items():
    aligned = st.pp.align_genes(sdata, vocabulary)
    print(f"{name:15s} {aligned.n_matched:4d} of its {sdata['table'].n_vars} genes are in the vocabulary")

# %% [markdown]
# ## Embed every cell of every platform with the same model
#
# Given a list, `storm_embed` embeds each slide with what it has (`modalities="auto"`: H&E where there is an
# aligned H&E image, expression always, spatial context always), and `storm_domains` clusters all cells of all
# slides together, so that a domain means the same thing on every slide.
#
# By default `storm_domains` centres each slide on its own mean first (`center="slide"`), as it standardises each
# slide's genes: for sections or replicates of one tissue, what differs between whole slides is then read as a
# batch effect, not as a domain. These three datasets are different tissues, whose differences are real, so they
# are centred together (`center="all"`).

# %%
slides_list = list(data.values())
st.tl.storm_embed(slides_list, model, verbose=False)
st.tl.storm_domains(slides_list, n_domains=N_DOMAINS, center="all", random_state=SEED)
for name, sdata in data.items():
    params = sdata["table"].uns["storm"]["X_storm"]
    print(f"{name:15s} embedded from: {params['modalities']}")

# %%
domains = pd.concat(
    {name: sdata["table"].obs["storm_domain"] for name, sdata in data.items()}, names=["dataset", "cell"]
).reset_index(level=0)
pd.crosstab(domains["dataset"], domains["storm_domain"])

# %% [markdown]
# The CosMx cells come from two fields of view (`.obs["fov"]`) of the same section; the joint domains can be
# compared between them:

# %%
cosmx_obs = data["cosmx_lung12"]["table"].obs
pd.crosstab(cosmx_obs["fov"], cosmx_obs["storm_domain"])

# %% [markdown]
# **What to expect.** These three datasets are different tissues measured with different panels, and the
# domains keep them apart. With the bundled reference (`storm-tiny-public-v5`) no domain was shared between
# datasets: the 200 HEST lung cells formed one domain, the 120 CosMx cells another (both fields of view, 67 + 53
# cells), and the remaining four domains split the Xenium cells (226, 111, 103 and 86 cells). Beside
# the embedding, `storm_domains` clustered the expression components of the few genes all three panels share,
# standardised within each dataset. Domains shared across datasets would need tissues that actually match, and a
# model trained on far more than the reference's 17 slides.
#
# ## Plots
#
# One UMAP of all cells, coloured by dataset and by domain:

# %%
st.pl.embedding_umap(slides_list, color=["slide", "storm_domain"], random_state=SEED)

# %% [markdown]
# And the domains in space, in microns, over the H&E where there is one:

# %%
st.pl.domains(slides_list, title=list(data))
