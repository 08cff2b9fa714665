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
# # Several sections of one tissue: shared domains across the mouse olfactory bulb
#
# A study rarely has one section. Analysed together, sections should get the same domains for the same tissue, so
# that a domain can be compared, counted and tested across sections, samples and conditions. Here three sections
# of the mouse olfactory bulb (legacy ST, Stahl et al. 2016), read with storm_sc's dataset loaders:
#
# | dataset | what it is |
# |---|---|
# | `st.datasets.mob()` | 262 spots with the five layers annotated by hand (granule cell, mitral cell, outer plexiform, glomerular, olfactory nerve); expression only, no image |
# | `st.datasets.mob_he(1)`, `st.datasets.mob_he(2)` | replicates 1 and 2 (267 and 280 spots) with their H&E image; no labels |
#
# The labels of the first section are used only to score the domains at the end.
#
# **Model**: `storm-tiny-public-v5`, the bundled reference (`model=None`; see the model card). The labelled
# section is not in its training corpus; the two replicates were its validation slides (never trained on).
# `STORM_SC_TUTORIAL_FAST=1` (as CI runs it) changes nothing here: no training happens.

# %%
import os

import pandas as pd
from sklearn.metrics import adjusted_rand_score

import storm_sc as st

FAST = os.environ.get("STORM_SC_TUTORIAL_FAST") == "1"
N_DOMAINS = 5
SEED = 0
st.settings.progress = not FAST
print(f"storm_sc {st.__version__}; fast mode: {FAST}; data directory: {st.settings.data_dir}")

# %%
sections = {"labelled": st.datasets.mob(), "replicate 1": st.datasets.mob_he(1), "replicate 2": st.datasets.mob_he(2)}
slides = list(sections.values())
for name, sdata in sections.items():
    slide = st.io.resolve(sdata)
    print(f"{name:12s} {slide.n_obs} spots, {slide.table.n_vars} genes, H&E: {slide.has_image}")

# %% [markdown]
# ## One embedding space, one set of domains
#
# Given a list, `storm_embed` embeds every section with the same model, each with what it has: H&E, expression and
# spatial context for the replicates, expression and context for the labelled section. `storm_domains` on the list
# clusters all spots of all sections together. Before clustering it removes each section's mean embedding
# (`center="slide"`, the default), as it standardises each section's genes for the expression components it
# clusters beside the embedding: what differs between whole sections (a batch effect, or here a section without an
# image) is not taken for a domain.

# %%
model = st.models.StormModel.from_pretrained()
st.tl.storm_embed(slides, model, verbose=False)
st.tl.storm_domains(slides, n_domains=N_DOMAINS, random_state=SEED)
for name, sdata in sections.items():
    print(f"{name:12s} embedded from: {sdata['table'].uns['storm']['X_storm']['modalities']}")

# %% [markdown]
# How many spots of each section fall in each domain: every domain is found in every section.

# %%
joint = pd.concat(
    {name: sdata["table"].obs["storm_domain"] for name, sdata in sections.items()}, names=["section", "spot"]
).reset_index(level=0)
pd.crosstab(joint["section"], joint["storm_domain"])

# %%
st.pl.domains(slides)

# %% [markdown]
# ## Against the manual layers, and against one centre for all sections
#
# The labelled section's domains from the joint call are scored against its layers, next to the same section
# analysed alone and to a joint call with one centre for all sections (`center="all"`), which keeps what differs
# between whole sections.

# %%
labels = sections["labelled"]["table"].obs["layer"]
scored = labels.notna().to_numpy()


def ari(domains: pd.Series) -> float:
    return adjusted_rand_score(labels[scored].astype(str), domains[scored].astype(str))


alone = st.tl.storm_domains(
    sections["labelled"], n_domains=N_DOMAINS, key_added="domain_alone", random_state=SEED, copy=True
)
st.tl.storm_domains(slides, n_domains=N_DOMAINS, center="all", key_added="domain_one_centre", random_state=SEED)
one_centre = pd.concat(
    {name: sdata["table"].obs["domain_one_centre"] for name, sdata in sections.items()}, names=["section", "spot"]
).reset_index(level=0)
print(f"ARI of the labelled section: joint call {ari(sections['labelled']['table'].obs['storm_domain']):.3f}, "
      f"alone {ari(alone['table'].obs['domain_alone']):.3f}, "
      f"joint with one centre {ari(sections['labelled']['table'].obs['domain_one_centre']):.3f}")  # fmt: skip
pd.crosstab(one_centre["section"], one_centre["domain_one_centre"])

# %% [markdown]
# **What to expect.** With storm_sc 0.1.0.dev0 and the bundled reference, on a 2-core CPU: the joint call shares
# its five domains across the three sections (each domain holds spots of every section), the maps show the bulb's
# concentric layers on all three, and the labelled section scores ARI 0.562 against its layers in the joint call
# and 0.524 alone. With one centre for all sections the two replicates with H&E sit apart from the section without
# an image: domains split by section (see the table above) and the ARI drops to 0.309. `benchmarks/domains_pooled.py`
# measures this over seeds and next to the usual multi-sample PCA recipe (see the benchmarks page).
#
# When the sections are different tissues, or patients whose tissue mix differs, what differs between whole
# sections may be biology: `center="all"` keeps it (tutorial 3 uses it for three unrelated datasets).
#
# ## One UMAP of all spots
#
# The UMAP shows the embedding itself, before `storm_domains` centres the sections: the section without an image
# sits apart from the two with H&E, while the domains (coloured) are shared.

# %%
st.pl.embedding_umap(slides, color=["storm_domain", "slide"])

# %% [markdown]
# With `center="slide"` the UMAP removes each section's mean embedding first, as `storm_domains` did: the three
# sections then overlap.

# %%
st.pl.embedding_umap(slides, color=["storm_domain", "slide"], center="slide")
