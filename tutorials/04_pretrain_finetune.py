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
# # Pretraining and fine-tuning STORM on your own slides
#
# storm_sc is also the machinery to train STORM: on a laptop CPU for small models, on a GPU, or on many GPUs with
# DDP. This tutorial
#
# 1. builds a `SpatialData` from your own files with `st.io.from_arrays` (here: the files of a real mouse
#    olfactory bulb ST experiment, Stahl et al. 2016, replicate 2),
# 2. pretrains a small model on two slides, validating on a held-out slide group (the "patient"),
# 3. saves it to one `.safetensors` file, inspects it and loads it back,
# 4. fine-tunes it on a slide from another experiment (a Visium FFPE mouse brain section),
# 5. describes the same run as a YAML recipe, as `storm-sc pretrain --config recipe.yaml` runs it.
#
# **Data**: `st.datasets.mob_he` and `st.datasets.visium_ffpe` read from `st.settings.data_dir`
# (`$STORM_SC_DATA_DIR`); the "own files" of step 1 are read from that folder too.
# Set `STORM_SC_TUTORIAL_FAST=1` for a few training steps only (as CI does).

# %%
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import yaml
from PIL import Image

import storm_sc as st

FAST = os.environ.get("STORM_SC_TUTORIAL_FAST") == "1"
EPOCHS = 1 if FAST else 20
FINETUNE_EPOCHS = 1 if FAST else 5
MAX_STEPS = 4 if FAST else -1
N_GENES = 2000
SEED = 0
st.settings.progress = not FAST
work = Path("storm_tutorial_04")
work.mkdir(exist_ok=True)
print(f"storm_sc {st.__version__}; fast mode: {FAST}; data directory: {st.settings.data_dir}; outputs in {work}")

# %% [markdown]
# ## Your own slide, from files
#
# Any slide can be brought in with `st.io.from_arrays`: an AnnData of counts, the centre of every spot in the
# image's pixels, the H&E image as an array, and the image's microns per pixel. It builds a `SpatialData` in true
# physical scale (an image pyramid when the image is large, spot circles, a linked table) that every storm_sc
# function understands. Here, the files are those of replicate 2 of the olfactory bulb experiment; the pixel size,
# 3.44 um/px, is what storm_sc estimates for this image from the 200 um pitch of the ST array.

# %%
folder = st.settings.data_dir / "mob_he_stahl2016"
table = ad.read_h5ad(folder / "DERIVED_MOB2_HE_Rep2.h5ad")
image = np.asarray(Image.open(folder / "HE_Rep2.jpg").convert("RGB"))
own = st.io.from_arrays(
    table,
    table.obsm["spatial"][:, :2],
    image,
    mpp=3.44,
    spot_diameter_um=100.0,
    platform="legacy_st",
    library_id="MOB_rep2",
)
print(own)
print(st.io.resolve(own))

# %% [markdown]
# ## Pretrain on two slides
#
# The training slides are `TrainingSlide`s with a `group`: slides of one patient (or animal, or tissue source)
# share a group, and validation holds out whole groups, never spots of a training slide. The vocabulary is the
# union of the slides' genes, cut to the `N_GENES` measured in most slides and most often detected.

# %%
slides = [
    st.training.TrainingSlide(st.datasets.mob_he(1), name="MOB_rep1", group="rep1"),
    st.training.TrainingSlide(own, name="MOB_rep2", group="rep2"),
]
vocabulary = st.training.union_vocabulary(slides, max_genes=N_GENES)
config = st.training.TrainingConfig(
    max_epochs=EPOCHS, max_steps=MAX_STEPS, batch_size=32, lr=3e-3, warmup_steps=10, val_groups=("rep2",), seed=SEED
)
model = st.models.StormModel("storm-tiny", vocabulary, seed=SEED)
model.fit(slides, config=config, output_dir=work / "pretrain", verbose=not FAST)
print(model)
print(pd.DataFrame(model.manifest["run"]["history"]).filter(regex="epoch|loss$").round(3).to_string())

# %% [markdown]
# `fit` trains in place and, with `output_dir`, writes `model.safetensors` and Lightning's CSV logs there. The
# model's `manifest` records the data (slides, groups, genes), the split and the run.

# %%
print(sorted(str(p.relative_to(work)) for p in (work / "pretrain").rglob("*") if p.is_file()))
print(model.manifest["split"])

# %% [markdown]
# ## Save, inspect, load
#
# One file holds everything: the weights, the architecture, the gene vocabulary, the manifest and the storm_sc
# version. `inspect` reads its header without loading the weights; `load` checks its content hash, so a damaged
# or modified file is refused with a clear error.

# %%
path = model.save(work / "mob_storm_tiny.safetensors", overwrite=True)
header = st.models.StormModel.inspect(path)
print({k: header[k] for k in ("storm_sc_version", "storage_dtype", "n_genes")}, header["config"]["name"])
loaded = st.models.StormModel.load(path)
print("same weights:", loaded.weights_digest() == model.weights_digest())

probe = st.datasets.mob_he(1)
same = np.allclose(model.embed(probe, verbose=False), loaded.embed(probe, verbose=False), atol=1e-6)
print("same embedding after loading:", same)

# %% [markdown]
# ## Fine-tune on another experiment
#
# Fine-tuning is `fit` on a trained model: the weights (and the expression decoders' gene statistics) are kept
# and training continues on the new slides. The vocabulary stays the model's; genes of the new slides outside it
# are ignored and vocabulary genes they do not measure are masked. The expression readout is refitted on the new
# slides, since the features it reads change with the weights: it then covers the genes they measure, and a
# warning names how many genes the previous readout covered that the new one does not (keep the original model to
# predict those). Here the new slide is a Visium FFPE mouse brain section, another platform (55 um spots) and
# another tissue.

# %%
brain = st.datasets.visium_ffpe("V10F24-078_A1")
aligned = st.pp.align_genes(brain, loaded.vocabulary)
print(f"{aligned.n_matched} of the {len(loaded.vocabulary)} vocabulary genes are measured in the new section")

before = loaded.embed(brain, verbose=False)
loaded.fit(
    [brain],
    max_epochs=FINETUNE_EPOCHS,
    max_steps=MAX_STEPS,
    batch_size=32,
    val_fraction=0.0,
    seed=SEED,
    verbose=not FAST,
)
after = loaded.embed(brain, verbose=False)
print(pd.DataFrame(loaded.manifest["run"]["history"]).filter(regex="epoch|loss$").round(3).to_string())
print("embedding changed by fine-tuning:", not np.allclose(before, after))

# %% [markdown]
# ## The same run as a YAML recipe
#
# For runs that should be repeatable (or run on a cluster), describe them in YAML: the datasets (through
# storm_sc's loaders, or paths of `.zarr` / `.h5ad` files), the model, the training settings, the split and the
# hardware. `load_recipe` validates the whole file before anything is loaded; `run_recipe` runs it, and so does
# the command line:
#
# ```bash
# storm-sc pretrain --config recipe.yaml                        # one process
# torchrun --nproc_per_node=8 -m storm_sc.cli pretrain --config recipe.yaml  # 8 GPUs with DDP
# ```
#
# A run writes a checkpoint to its output folder at the end of every epoch; a run that was interrupted continues from
# its last completed epoch with the same command and `--resume` (in Python, `st.training.fit(..., output_dir=...,
# resume=True)`). Job scripts that may run twice use `--resume auto` (resume if there is a run to resume, else
# start); a requeued SLURM job resumes by itself.
#
# `configs/` in the repository holds the recipes of the named models (`storm-tiny.yaml` for the shipped reference
# checkpoint, `storm-small.yaml` for a larger CPU model, `storm-base.yaml` for GPUs).

# %%
recipe_text = f"""
model: storm-tiny
vocabulary: {{max_genes: {N_GENES}}}
datasets:
  - {{loader: mob_he, args: {{replicate: 1}}, name: MOB_rep1, group: rep1}}
  - {{loader: mob_he, args: {{replicate: 2}}, name: MOB_rep2, group: rep2}}
training:
  max_epochs: {EPOCHS}
  max_steps: {MAX_STEPS}
  batch_size: 32
  lr: 3.0e-3
  warmup_steps: 10
split:
  val_groups: [rep2]
trainer:
  accelerator: auto
  devices: auto
seed: {SEED}
output_dir: {work / "recipe_run"}
"""
recipe_path = work / "recipe.yaml"
recipe_path.write_text(recipe_text)
recipe = st.training.load_recipe(recipe_path)
print(yaml.safe_dump(recipe.raw, sort_keys=False))
from_recipe = st.training.run_recipe(recipe, overwrite=True, verbose=not FAST)
print(from_recipe, "->", sorted(p.name for p in (work / "recipe_run").iterdir()))

# %% [markdown]
# **What to expect.** The loaded model has the same weights digest and gives the same embedding as the saved one
# (`True` twice), and fine-tuning changes the embedding (`True`). The loss tables show the training (and, once
# a full epoch has run, the validation) losses per epoch; in fast mode there are only a few steps and they say
# nothing about convergence.
