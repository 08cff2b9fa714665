"""Benchmark: spatial domains of several slides analysed together (one call, one set of domains for all).

``st.tl.storm_domains`` on a list of slides promises domains that mean the same thing on every slide. This script
measures it on the labelled slides of the data folder, next to the usual multi-sample expression recipe:

* ``her2st``: the 8 pathologist-annotated HER2+ tumour sections (8 patients) in one call, k = the regions
  annotated over all of them;
* ``mob``: the labelled mouse olfactory bulb section with the two unlabelled replicates that have an H&E image
  (one call over the three; only the labelled section is scored).

Per method, three numbers:

* **pooled ARI / NMI**: over every labelled spot of every slide of the joint call, so a region split into one
  domain per slide counts as wrong;
* **per-slide ARI** of the same joint call (mean over labelled slides): how well the shared domains still cut each
  slide;
* **alone ARI**: the method run on each labelled slide on its own, with that slide's number of regions (what
  ``domains.py`` reports), for comparison in the same run;

and **slide mixing**, a label-free diagnostic: the entropy of the slides within each domain over the entropy of
the slides overall, averaged over domains by size (1: every domain draws on the slides in proportion to their
size; 0: every domain comes from a single slide). Replicates of one tissue should mix; tumours of different
patients need not.

Methods: ``storm`` (``storm_embed`` then ``storm_domains(n_domains=k)`` on the list), ``components_storm_domains``
(``storm_domains`` on the slides' expression components alone), and on the log-normalised counts of all slides
concatenated (genes shared by all, highly variable genes chosen per slide and combined, ``batch_key``; one PCA)
``pca_kmeans``, ``pca_leiden`` and ``pca_smooth_kmeans`` (PCs smoothed within each slide by ``storm_domains``'
rule). Labels are read only for scoring.

Run from the repository root::

    python benchmarks/domains_pooled.py --out results/domains_pooled.md --out results/domains_pooled.csv

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO_ROOT))

import storm_sc as st  # noqa: E402
from benchmarks._data_dir import default_data_dir, offline_data  # noqa: E402
from benchmarks._domain_baselines import (  # noqa: E402
    clustering_scores,
    hvg_pca,
    kmeans_domains,
    leiden_domains,
    smooth_like_storm,
)
from benchmarks._report import mean_sd, out_path_problems, progress_only, publish  # noqa: E402
from benchmarks.domains import (  # noqa: E402
    DATASETS,
    HER2ST_LABELLED,
    Dataset,
    local_dlpfc,
    smoothing_defaults,
    smoothing_graph_of,
)

logger = logging.getLogger("storm_sc.benchmarks")

METHODS = ("storm", "components_storm_domains", "pca_kmeans", "pca_leiden", "pca_smooth_kmeans")
UNLABELLED = {
    f"mob_he_{r}": Dataset(
        f"mob_he_{r}",
        f"mouse olfactory bulb replicate {r} (legacy ST, Stahl et al. 2016) with H&E; no labels",
        ("mob_he_stahl2016/",),
        lambda r=r: st.datasets.mob_he(r, verbose=False),
        label_key="",
    )
    for r in (1, 2)
}
POOLS = {
    "her2st": tuple(f"her2st_{s}" for s in HER2ST_LABELLED),
    "mob": ("mob", "mob_he_1", "mob_he_2"),
    # every DLPFC section in the data folder (see pools()); a pool when there are at least two
    "dlpfc": (),
}


def pools(data_dir: Path) -> dict[str, tuple[str, ...]]:
    """:data:`POOLS` for a data folder: ``"dlpfc"`` holds the DLPFC sections found there.

    Examples
    --------
    >>> pools(Path("/nonexistent"))["dlpfc"]
    ()
    """
    return {**POOLS, "dlpfc": tuple(local_dlpfc(data_dir))}


@dataclass
class PoolSlide:
    """One slide of a pool: its data, its labels (all missing when unlabelled) and its own number of regions."""

    name: str
    sdata: Any
    labels: pd.Series
    n_domains: int
    # A copy embedded by the STORM model (see embed_pool): zero-shot embeddings depend on no seed, so once per run.
    embedded: Any = None


def dataset(name: str) -> Dataset:
    """The :class:`~benchmarks.domains.Dataset` of a slide name (labelled, or an unlabelled replicate)."""
    return UNLABELLED[name] if name in UNLABELLED else DATASETS[name]


def load_pool_slide(name: str) -> PoolSlide:
    """Load one slide through storm_sc, with its labels (``None`` where unlabelled)."""
    ds = dataset(name)
    sdata = ds.load()
    table = sdata["table"]
    if ds.label_key:
        labels = table.obs[ds.label_key].astype(object)
        labels = labels.where(labels.notna() & ~labels.isin(ds.unlabelled))
    else:
        labels = pd.Series([None] * table.n_obs, index=table.obs_names, dtype=object)
    labels = labels.where(labels.notna(), None)
    return PoolSlide(name, sdata, labels, int(labels.dropna().nunique()))


def slide_mixing(slides: np.ndarray, domains: np.ndarray) -> float:
    """How evenly the domains draw on the slides: size-weighted entropy of slides per domain over the overall one.

    Parameters
    ----------
    slides
        Slide of each observation.
    domains
        Domain of each observation.

    Returns
    -------
    1 when every domain holds the slides in their overall proportions, 0 when every domain comes from one slide
    (``nan`` for a single slide).

    Examples
    --------
    >>> s = np.array(["a", "a", "b", "b"])
    >>> slide_mixing(s, np.array([0, 1, 0, 1])), slide_mixing(s, np.array([0, 0, 1, 1]))
    (1.0, 0.0)
    """
    table = pd.crosstab(pd.Series(np.asarray(domains)), pd.Series(np.asarray(slides))).to_numpy(dtype=np.float64)
    if table.shape[1] < 2:
        return float("nan")

    def entropy(p: np.ndarray) -> np.ndarray:
        p = p / p.sum(axis=-1, keepdims=True)
        return -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(axis=-1)

    overall = entropy(table.sum(axis=0))
    weights = table.sum(axis=1) / table.sum()
    return float((weights * entropy(table)).sum() / overall)


def pooled_pcs(slides: Sequence[PoolSlide], *, n_hvg: int, n_pcs: int, random_state: int) -> list[np.ndarray]:
    """The usual multi-sample recipe: counts of all slides on their shared genes, HVGs per slide, one PCA.

    Returns
    -------
    One ``(n_obs_i, n_pcs)`` array per slide.
    """
    import anndata as ad

    tables = [s.sdata["table"] for s in slides]
    combined = ad.concat(
        [ad.AnnData(t.X, obs=pd.DataFrame(index=t.obs_names), var=pd.DataFrame(index=t.var_names)) for t in tables],
        join="inner",
        label="slide",
        keys=[s.name for s in slides],
        index_unique="-",
    )
    pcs, _ = hvg_pca(combined, n_hvg=n_hvg, n_pcs=n_pcs, random_state=random_state, batch_key="slide")
    bounds = np.cumsum([0, *(t.n_obs for t in tables)])
    return [pcs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def embed_pool(slides: Sequence[PoolSlide], model: Any, n_draws: int | None = None) -> None:
    """Embed every slide with ``model`` (one ``storm_embed`` call on the list) into ``slide.embedded``."""
    options = {} if n_draws is None else {"n_draws": n_draws}
    embedded = st.tl.storm_embed([s.sdata for s in slides], model, device="cpu", copy=True, verbose=False, **options)
    for slide, copy in zip(slides, embedded, strict=True):
        slide.embedded = copy


def pool_labels(
    slides: Sequence[PoolSlide],
    method: str,
    n_domains: int,
    seed: int,
    *,
    n_hvg: int,
    n_pcs: int,
    center: str | None = None,
) -> list[np.ndarray]:
    """Domains of one method over the slides analysed together (one call; a single slide is its own pool).

    Parameters
    ----------
    slides
        The slides of the call.
    method
        One of :data:`METHODS`.
    n_domains
        Domains over all slides.
    seed
        Seed of the PCA solver and the clustering.
    n_hvg, n_pcs
        Highly variable genes and principal components of the PCA baselines.
    center
        ``storm_domains``' ``center`` for the ``*storm*`` methods (``None``: its default).

    Returns
    -------
    One label array per slide.
    """
    options = {} if center is None else {"center": center}
    if method == "storm":
        if any(s.embedded is None for s in slides):
            raise ValueError("`storm` needs the slides embedded first (embed_pool).")
        out = st.tl.storm_domains(
            [s.embedded for s in slides], n_domains=n_domains, random_state=seed, copy=True, **options
        )
        return [o["table"].obs["storm_domain"].to_numpy() for o in out]
    if method == "components_storm_domains":
        key = "X_benchmark_components"
        components = st.pp.expression_components([s.sdata["table"] for s in slides])
        for s, c in zip(slides, components, strict=True):
            s.sdata["table"].obsm[key] = c
        try:
            out = st.tl.storm_domains(
                [s.sdata for s in slides], n_domains=n_domains, use_rep=key, expression_pcs=0, random_state=seed,
                copy=True, **options,
            )  # fmt: skip
        finally:
            for s in slides:
                del s.sdata["table"].obsm[key]
        return [o["table"].obs["storm_domain"].to_numpy() for o in out]
    z = pooled_pcs(slides, n_hvg=n_hvg, n_pcs=n_pcs, random_state=seed)
    if method == "pca_smooth_kmeans":
        steps, weight = smoothing_defaults()
        graphs = [smoothing_graph_of(s.sdata) for s in slides]
        z = [smooth_like_storm(zi, g, steps=steps, weight=weight) for zi, g in zip(z, graphs, strict=True)]
    stacked = np.vstack(z)
    if method == "pca_leiden":
        labels, _ = leiden_domains(stacked, n_domains, random_state=seed)
    else:
        labels = kmeans_domains(stacked, n_domains, random_state=seed)
    bounds = np.cumsum([0, *(len(zi) for zi in z)])
    return [labels[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# --------------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------------
def score_pool(
    pool: str, slides: Sequence[PoolSlide], joint: Sequence[np.ndarray], alone: dict[str, np.ndarray]
) -> dict[str, float]:
    """Pooled, per-slide and alone scores of one method on one pool, and its slide mixing.

    Parameters
    ----------
    pool
        The pool's name (for messages).
    slides
        The pool's slides.
    joint
        Domains of the joint call, one array per slide.
    alone
        Domains of each labelled slide analysed on its own, by slide name.

    Returns
    -------
    ``pooled_ari``, ``pooled_nmi``, ``per_slide_ari``, ``alone_ari``, ``slide_mixing``, ``n_scored``.
    """
    labelled = [i for i, s in enumerate(slides) if s.n_domains > 0]
    if not labelled:
        raise ValueError(f"pool {pool!r} has no labelled slide.")
    truth = np.concatenate([slides[i].labels.to_numpy(dtype=object) for i in labelled])
    pred = np.concatenate([np.asarray(joint[i]).astype(str) for i in labelled])
    pooled = clustering_scores(truth, pred)
    per_slide = [clustering_scores(slides[i].labels, np.asarray(joint[i]).astype(str))["ari"] for i in labelled]
    own = [clustering_scores(slides[i].labels, alone[slides[i].name])["ari"] for i in labelled]
    names = np.concatenate([[s.name] * len(j) for s, j in zip(slides, joint, strict=True)])
    return {
        "pooled_ari": pooled["ari"],
        "pooled_nmi": pooled["nmi"],
        "per_slide_ari": float(np.mean(per_slide)),
        "alone_ari": float(np.mean(own)),
        "slide_mixing": slide_mixing(names, np.concatenate([np.asarray(j).astype(str) for j in joint])),
        "n_scored": pooled["n_scored"],
    }


def run(
    pools: dict[str, list[PoolSlide]],
    methods: Sequence[str],
    seeds: Sequence[int],
    *,
    model: Any,
    n_hvg: int,
    n_pcs: int,
    threads: int,
    cpu: dict[str, float],
    center: str | None = None,
    n_draws: int | None = None,
) -> pd.DataFrame:
    """Every method x pool x seed: the joint call, each labelled slide alone, and their scores.

    Parameters
    ----------
    pools
        Pool name -> its loaded slides.
    methods
        Methods, in table order.
    seeds
        Seeds.
    model
        The STORM model (``None``: the ``storm`` row is skipped).
    n_hvg, n_pcs
        Of the PCA baselines.
    threads
        torch threads, set again before every call (scanpy's and scikit-learn's thread-pool limits reset OpenMP).
    cpu
        Process CPU seconds per method, added up here.
    center
        ``storm_domains``' ``center`` (``None``: its default).
    n_draws
        ``storm_embed``'s ``n_draws`` (``None``: its default).

    Returns
    -------
    One row per method x pool x seed.
    """
    import torch

    rows = []
    for pool, slides in pools.items():
        k = int(pd.concat([s.labels for s in slides]).dropna().nunique())
        if "storm" in methods:
            torch.set_num_threads(threads)
            c0 = time.process_time()
            embed_pool(slides, model, n_draws)
            cpu["storm"] = cpu.get("storm", 0.0) + time.process_time() - c0
        for method in methods:
            for seed in seeds:
                c0 = time.process_time()
                torch.set_num_threads(threads)
                kw = {"n_hvg": n_hvg, "n_pcs": n_pcs, "center": center}
                joint = pool_labels(slides, method, k, seed, **kw)
                alone = {
                    s.name: pool_labels([s], method, s.n_domains, seed, **kw)[0] for s in slides if s.n_domains > 0
                }
                cpu[method] = cpu.get(method, 0.0) + time.process_time() - c0
                scores = score_pool(pool, slides, joint, alone)
                rows.append({"pool": pool, "method": method, "seed": seed, "n_domains": k, **scores})
                logger.info(
                    "%s %s seed %d: pooled ARI %.3f, per slide %.3f, alone %.3f, mixing %.2f",
                    pool, method, seed, scores["pooled_ari"], scores["per_slide_ari"], scores["alone_ari"],
                    scores["slide_mixing"],
                )  # fmt: skip
    return pd.DataFrame(rows)


def summary_table(per_seed: pd.DataFrame, methods: Sequence[str], cpu: dict[str, float]) -> pd.DataFrame:
    """Mean ± sd over seeds of every score, one row per method, one column group per pool."""
    rows = []
    for method in methods:
        row: dict[str, str] = {"method": method}
        for pool in per_seed["pool"].unique():
            sel = per_seed[(per_seed["pool"] == pool) & (per_seed["method"] == method)]
            for col, name in (
                ("pooled_ari", "pooled ARI"),
                ("pooled_nmi", "pooled NMI"),
                ("per_slide_ari", "per-slide ARI"),
                ("alone_ari", "alone ARI"),
                ("slide_mixing", "mixing"),
            ):
                row[f"{pool} {name}"] = mean_sd(sel[col])
        row["CPU s"] = f"{cpu.get(method, 0.0):.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Spatial domains of several slides analysed together.")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $STORM_SC_DATA_DIR or ../shared/data")
    parser.add_argument(
        "--pools",
        nargs="+",
        choices=sorted(POOLS),
        default=None,
        help="default: her2st, mob, and dlpfc when the data folder holds two or more DLPFC sections",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--model", default=None, help="STORM checkpoint path or registered name (default: reference)")
    parser.add_argument("--no-storm", action="store_true", help="baselines only")
    parser.add_argument("--n-draws", type=int, default=None, help="storm_embed's n_draws (default: its default)")
    parser.add_argument("--n-hvg", type=int, default=2000, help="highly variable genes of the PCA baselines")
    parser.add_argument("--n-pcs", type=int, default=30, help="principal components of the PCA baselines")
    parser.add_argument(
        "--center", choices=["slide", "all"], default=None, help="storm_domains' `center` (default: its default)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", action="append", type=Path, default=[], help=".md (tables) or .csv; repeatable")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out files")
    return parser.parse_args(argv)


def _check(args: argparse.Namespace, data_dir: Path) -> None:
    problems = []
    n_dlpfc = len(pools(data_dir)["dlpfc"])
    if args.pools is not None and "dlpfc" in args.pools and n_dlpfc < 2:
        problems.append(
            f"the dlpfc pool needs at least two DLPFC sections in {data_dir} (dlpfc_<sample>/ folders as "
            f"st.datasets.dlpfc reads them); found {n_dlpfc}"
        )
    if args.n_hvg < 2 or args.n_pcs < 2 or args.threads < 1:
        problems.append("--n-hvg and --n-pcs must be >= 2 and --threads >= 1")
    problems += out_path_problems(args.out, data_dir, args.overwrite)
    if problems:
        raise SystemExit("; ".join(problems) + ".")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    args = _parse_args(argv)
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    _check(args, data_dir)
    progress_only(logger)

    pool_map = pools(data_dir)
    if args.pools is None:
        args.pools = [p for p in POOLS if p != "dlpfc" or len(pool_map["dlpfc"]) >= 2]
    cpu: dict[str, float] = {}
    names = [n for p in args.pools for n in pool_map[p]]
    with offline_data(data_dir, {n: dataset(n).files for n in names}, prefix="storm_domains_pooled_"):
        model, storm_text = None, "left out (--no-storm)"
        if not args.no_storm:
            model = st.models.StormModel.from_pretrained(args.model)
            from storm_sc.tl._model_arg import model_name

            storm_text = f"{model_name(model, args.model)}, zero-shot"
            if args.n_draws is not None:
                storm_text += f", storm_embed n_draws={args.n_draws}"
        center = "its default" if args.center is None else repr(args.center)
        storm_text += f"; storm_domains with center={center}, otherwise its defaults"
        methods = [m for m in METHODS if m != "storm" or model is not None]
        t0 = time.perf_counter()
        loaded = {p: [load_pool_slide(n) for n in pool_map[p]] for p in args.pools}
        per_seed = run(
            loaded,
            methods,
            args.seeds,
            model=model,
            n_hvg=args.n_hvg,
            n_pcs=args.n_pcs,
            threads=args.threads,
            cpu=cpu,
            center=args.center,
            n_draws=args.n_draws,
        )
        wall = time.perf_counter() - t0

    summary = summary_table(per_seed, methods, cpu)
    header = [
        "Spatial domains of several slides in one call — "
        + "; ".join(
            f"{p}: {len(slides)} slides ({sum(s.n_domains > 0 for s in slides)} labelled), k = "
            f"{int(per_seed.loc[per_seed['pool'] == p, 'n_domains'].iloc[0])}"
            for p, slides in loaded.items()
        ),
        f"seeds {', '.join(map(str, args.seeds))}; PCA baselines: {args.n_hvg} HVGs (seurat, per slide), "
        f"{args.n_pcs} PCs of all slides",
        f"STORM: {storm_text}",
        f"total wall {wall:.0f} s; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{args.threads}",
    ]
    notes = (
        "Mean ± sd over seeds. pooled: ARI / NMI over the labelled spots of all slides of the joint call; per-slide: "
        "ARI of the joint call within each labelled slide (mean); alone: each labelled slide analysed on its own "
        "with its own number of regions (mean); mixing: entropy of the slides within each domain over their overall "
        "entropy (1: domains shared by all slides in proportion, 0: one slide per domain). CPU s: process CPU "
        "seconds of the method, joint and alone calls, all pools and seeds."
    )
    publish(args.out, header, [(None, summary)], notes, per_seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
