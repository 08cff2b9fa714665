"""Run a published spatial-domain method (SpaGCN, GraphST, Novae) on one slide, in its own Python environment.

This file is executed by the interpreter of a separate, throwaway environment that holds the method (those
packages pin their own torch / torch-geometric stacks, which must not enter storm_sc's environment)::

    <other-python> benchmarks/_domain_external.py METHOD INPUT.h5ad N_DOMAINS SEED OUTPUT.csv

It reads only numpy, pandas, anndata and the method itself. ``INPUT.h5ad`` holds raw counts in ``.X``, positions in
microns in ``.obsm["spatial"]`` and ``.uns["platform"]``; it carries **no labels**. ``OUTPUT.csv`` gets one domain per
observation (column ``domain``) and the method's settings are printed as one JSON line starting with ``SETTINGS``.

Each method follows its authors' tutorial for this kind of data, with two forced departures (reported in the
benchmark's README): no histology channel (SpaGCN; one of the two slides has no image), and mclust (an R package,
not installable here) replaced by its scikit-learn equivalent, a Gaussian mixture with one shared full covariance
("EEE" in mclust's naming).
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

# Centre-to-centre spot distance (um) by platform: Visium's hexagonal 100 um lattice, legacy ST's square 200 um one.
_PITCH_UM = {"visium": 100.0, "legacy_st": 200.0}


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _gmm_eee(z: np.ndarray, n_domains: int, seed: int) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(n_components=n_domains, covariance_type="tied", random_state=seed).fit_predict(z)


def run_spagcn(adata: ad.AnnData, n_domains: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """SpaGCN 1.2 tutorial: spatial adjacency (no histology), l for p = 0.5, resolution search, refinement."""
    import scanpy as sc
    import SpaGCN as spg

    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    adj = spg.calculate_adj_matrix(x=xy[:, 0].tolist(), y=xy[:, 1].tolist(), histology=False)
    adata = adata.copy()
    adata.var_names_make_unique()
    spg.prefilter_genes(adata, min_cells=3)
    spg.prefilter_specialgenes(adata)
    sc.pp.normalize_per_cell(adata)
    sc.pp.log1p(adata)
    # SpaGCN 1.2 densifies with `.A`, which scipy >= 1.14 sparse matrices no longer have.
    adata.X = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float32)
    p = 0.5
    l_value = spg.search_l(p, adj, start=0.01, end=1000, tol=0.01, max_run=100)
    res = spg.search_res(
        adata, adj, l_value, n_domains, start=0.7, step=0.1, tol=5e-3, lr=0.05, max_epochs=20,
        r_seed=seed, t_seed=seed, n_seed=seed,
    )  # fmt: skip
    clf = spg.SpaGCN()
    clf.set_l(l_value)
    _seed_everything(seed)
    clf.train(adata, adj, init_spa=True, init="louvain", res=res, tol=5e-3, lr=0.05, max_epochs=200)
    pred, _ = clf.predict()
    platform = adata.uns.get("platform", "visium")
    shape = "hexagon" if platform == "visium" else "square"
    refined = spg.refine(sample_id=adata.obs_names.tolist(), pred=pred.tolist(), dis=adj, shape=shape)
    return np.asarray(refined), {"p": p, "l": float(l_value), "resolution": float(res), "refine": shape}


def run_graphst(adata: ad.AnnData, n_domains: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """GraphST 1.1 tutorial (10x Visium DLPFC): 600 epochs, PCA(20) of the embedding, EEE mixture, refinement."""
    import torch
    from GraphST import GraphST
    from GraphST.utils import refine_label
    from sklearn.decomposition import PCA

    adata = adata.copy()
    adata.var_names_make_unique()
    model = GraphST.GraphST(adata, device=torch.device("cpu"), random_seed=seed)
    adata = model.train()
    emb = PCA(n_components=20, random_state=42).fit_transform(adata.obsm["emb"])
    labels = _gmm_eee(emb, n_domains, seed).astype(str)
    settings: dict[str, Any] = {"epochs": 600, "clustering": "GMM tied covariance (mclust EEE) on PCA(20)"}
    if adata.uns.get("platform", "visium") == "visium":
        # The tutorial refines Visium labels by a vote of the 50 nearest spots; on a ~260-spot legacy ST slide
        # that would be a fifth of the tissue, and its Stereo-seq/ST tutorials do not refine.
        adata.obs["domain"] = labels
        labels = np.asarray(refine_label(adata, radius=50, key="domain"))
        settings["refine_radius"] = 50
    return labels, settings


def run_novae(adata: ad.AnnData, n_domains: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Novae 1.1 trained from scratch on the slide (its pretrained weights are on the Hugging Face hub)."""
    import lightning as L
    import novae
    import scanpy as sc

    adata = adata.copy()
    adata.var_names_make_unique()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    pitch = _PITCH_UM.get(adata.uns.get("platform", "visium"), 100.0)
    # Delaunay edges up to 1.5 pitches: the first ring of spots, as Novae's "visium" preset.
    novae.spatial_neighbors(adata, radius=1.5 * pitch)
    L.seed_everything(seed, verbose=False)
    model = novae.Novae(adata)
    model.fit(adata, accelerator="cpu", num_workers=0)
    model.compute_representations(adata, accelerator="cpu", num_workers=0)
    key = model.assign_domains(adata, n_domains=n_domains)
    return adata.obs[key].astype(str).to_numpy(), {"training": "from scratch, default hyper-parameters",
                                                   "graph_radius_um": 1.5 * pitch}  # fmt: skip


METHODS = {"spagcn": run_spagcn, "graphst": run_graphst, "novae": run_novae}


def main(argv: list[str]) -> int:
    """Command line: ``METHOD INPUT.h5ad N_DOMAINS SEED OUTPUT.csv``."""
    if len(argv) != 5 or argv[0] not in METHODS:
        print(f"usage: {sys.argv[0]} {{{','.join(METHODS)}}} INPUT.h5ad N_DOMAINS SEED OUTPUT.csv", file=sys.stderr)
        return 2
    method, path, n_domains, seed, out = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4]
    adata = ad.read_h5ad(path)
    _seed_everything(seed)
    start = time.process_time()
    labels, settings = METHODS[method](adata, n_domains, seed)
    settings["cpu_s"] = time.process_time() - start
    pd.DataFrame({"domain": labels}, index=adata.obs_names).to_csv(out)
    print("SETTINGS " + json.dumps(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
