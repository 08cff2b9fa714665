"""Benchmark: spatial domains against manual annotations (DLPFC sections, mouse olfactory bulb, her2st tumours).

Every method is run on the same slides, with the number of domains set to the number of annotated layers, and
scored with the adjusted Rand index (ARI) and normalised mutual information (NMI) against the manual labels
(unlabelled spots left out). Labels are read only for scoring: no method sees them.

* ``storm``: ``st.tl.storm_embed`` (a checkpoint, optionally adapted to the slide without labels, or, for
  development while no reference checkpoint exists, an architecture trained from scratch on the slide itself)
  then ``st.tl.storm_domains(n_domains=k)``;
* ``pca_leiden`` / ``pca_kmeans``: PCA of the log-normalised highly variable genes, then Leiden (resolution
  searched for k clusters) or k-means;
* ``pca_smooth_leiden`` / ``pca_smooth_kmeans``: the same principal components mixed with their spatial
  neighbours' by the graph and rule of ``storm_domains`` before clustering;
* ``pca_storm_domains``: ``st.tl.storm_domains`` itself run on the principal components instead of the STORM
  embedding (same centring, cosine geometry, smoothing and k-means; no expression components beside them), which
  isolates the representation;
* ``components_storm_domains``: ``st.tl.storm_domains`` on the expression components alone
  (``st.pp.expression_components``: the slide's most variable genes standardised, then PCA), the block that
  ``storm_domains`` clusters beside the STORM embedding by default: the ``storm`` row against this one is what
  the embedding adds;
* ``spagcn`` / ``graphst`` / ``novae``: published methods, run in a separate Python environment
  (``--external-python``), when given.

Several seeds give mean ± sd. Run from the repository root::

    python benchmarks/domains.py --out results/domains.md --out results/domains.csv

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
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
from storm_sc.datasets._visium import dlpfc_samples  # noqa: E402

logger = logging.getLogger("storm_sc.benchmarks")

EXTERNAL_METHODS = ("spagcn", "graphst", "novae")
# The baselines computed here, in table order (see baseline_labels).
BASELINE_METHODS = (
    "pca_leiden",
    "pca_kmeans",
    "pca_smooth_leiden",
    "pca_smooth_kmeans",
    "pca_storm_domains",
    "components_storm_domains",
)
EXTERNAL_SCRIPT = Path(__file__).resolve().parent / "_domain_external.py"
# Pathologist-annotated her2st sections, one per patient: expression and positions, and the H&E image when the
# data folder holds one (none does here). Only patient C's other sections (C2-C6) are in the reference's corpus.
HER2ST_LABELLED = ("A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1")
QUICK_ADAPT_EPOCHS = 2


@dataclass(frozen=True)
class Dataset:
    """A labelled slide of the benchmark and where its files live in the data folder."""

    name: str
    description: str
    files: tuple[str, ...]
    load: Callable[[], Any]
    label_key: str = "layer"
    # Label values that mean "not annotated" (scored like missing labels).
    unlabelled: tuple[str, ...] = ()


# The DLPFC sections storm_sc's dataset registry knows (spatialLIBD's 12).
DLPFC_SAMPLES = tuple(dlpfc_samples())
# The section the tables of the benchmarks page were measured on (the one in the data folder here).
DLPFC_DEFAULT = "151675"
DATASETS = {
    f"dlpfc_{_sample}": Dataset(
        f"dlpfc_{_sample}",
        f"DLPFC {_sample} (Visium, Maynard et al. 2021): manual cortical layers",
        (f"dlpfc_{_sample}/",),
        lambda s=_sample: st.datasets.dlpfc(s, verbose=False),
    )
    for _sample in DLPFC_SAMPLES
}
DATASETS["mob"] = Dataset(
    "mob",
    "mouse olfactory bulb (legacy ST, Stahl et al. 2016): 5 layers, no image",
    ("mob/",),
    lambda: st.datasets.mob(verbose=False),
)
for _section in HER2ST_LABELLED:
    DATASETS[f"her2st_{_section}"] = Dataset(
        f"her2st_{_section}",
        f"her2st {_section} (legacy ST, HER2+ breast tumour, Andersson et al. 2021): pathologist regions",
        (
            "her2st/data/ST-cnts/",
            "her2st/data/ST-spotfiles/",
            "her2st/data/ST-pat/",
            f"her2st/data/ST-imgs/{_section[0]}/{_section}/",
            "her2st/res/",
            "her2st/her_",
        ),
        lambda s=_section: st.datasets.her2st(s, image=None, verbose=False),
        label_key="pathologist_label",
        unlabelled=("undetermined",),
    )
# Names that stand for several slides, summarised as one column (mean ± sd over the slides of their seed means;
# a group of one slide shows that slide's mean ± sd over seeds). "dlpfc" is resolved per data folder by groups().
GROUPS = {"her2st": tuple(f"her2st_{s}" for s in HER2ST_LABELLED), "dlpfc": (f"dlpfc_{DLPFC_DEFAULT}",)}
DEFAULT_DATASETS = ("dlpfc", "mob", "her2st")


def local_dlpfc(data_dir: Path) -> list[str]:
    """The DLPFC datasets whose count matrix is in ``data_dir`` (their other files are checked when loading).

    Examples
    --------
    >>> local_dlpfc(Path("/nonexistent"))
    []
    """
    return [
        f"dlpfc_{s}" for s in DLPFC_SAMPLES if (data_dir / f"dlpfc_{s}" / "filtered_feature_bc_matrix.h5").is_file()
    ]


def groups(data_dir: Path) -> dict[str, tuple[str, ...]]:
    """:data:`GROUPS` for a data folder: ``"dlpfc"`` is every DLPFC section found there (151675 when none is).

    Whoever holds more of spatialLIBD's sections gets them scored by the default command, as one column.
    """
    return {**GROUPS, "dlpfc": tuple(local_dlpfc(data_dir)) or GROUPS["dlpfc"]}


def expand(names: Sequence[str], group_map: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """Dataset names with every group replaced by its slides, in order, without repeats.

    Parameters
    ----------
    names
        Dataset or group names.
    group_map
        Groups to expand (default: :data:`GROUPS`; see :func:`groups`).

    Returns
    -------
    Dataset names.

    Examples
    --------
    >>> expand(["mob", "her2st"])[:3]
    ['mob', 'her2st_A1', 'her2st_B1']
    >>> expand(["dlpfc", "dlpfc_151675"])
    ['dlpfc_151675']
    """
    group_map = GROUPS if group_map is None else group_map
    out: list[str] = []
    for name in names:
        for d in group_map.get(name, (name,)):
            if d not in out:
                out.append(d)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Slide:
    """One loaded, labelled slide."""

    name: str
    sdata: Any
    labels: pd.Series
    n_domains: int
    pcs: dict[int, np.ndarray]
    hvgs: list[str]

    @property
    def has_image(self) -> bool:
        """Whether the slide came with an image (STORM then embeds it with its H&E)."""
        return bool(self.sdata.images)


# --------------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------------
class Timer:
    """Process CPU seconds per method, added up over the run."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}

    def measure(self, key: str, fn: Callable[[], Any]) -> Any:
        c0 = time.process_time()
        try:
            return fn()
        finally:
            self.cpu[key] = self.cpu.get(key, 0.0) + time.process_time() - c0


def smoothing_defaults(steps: int | None = None) -> tuple[int, float]:
    """Steps and weight of ``storm_domains``' smoothing, read from the package (not restated here).

    ``steps`` replaces the default number of steps (``--smooth-steps``). The graph is ``storm_domains``' own
    (:func:`storm_sc.tl._domains.smoothing_graph`).
    """
    import inspect

    params = inspect.signature(st.tl.storm_domains).parameters
    return params["smooth_steps"].default if steps is None else steps, params["smooth_weight"].default


def smoothing_graph_of(sdata: Any) -> Any:
    """``storm_domains``' smoothing graph of a slide: its grid's first ring, or 6 nearest neighbours off a grid."""
    from storm_sc.tl._domains import smoothing_graph

    return smoothing_graph(st.io.resolve(sdata, use_image=False))[0]


def baseline_labels(
    slide: Slide, method: str, seed: int, *, smooth_steps: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Domains of one baseline on one slide for one seed.

    Parameters
    ----------
    slide
        The slide (its PCA for ``seed`` must be computed).
    method
        ``pca_leiden``, ``pca_kmeans``, ``pca_smooth_leiden``, ``pca_smooth_kmeans``, ``pca_storm_domains`` or
        ``components_storm_domains``.
    seed
        Seed of the PCA solver and the clustering.
    smooth_steps
        Steps of the smoothing of the smoothed and ``*_storm_domains`` rows (``None``: ``storm_domains``' default).

    Returns
    -------
    ``(labels, details)``.
    """
    z = slide.pcs[seed]
    steps, weight = smoothing_defaults(smooth_steps)
    details: dict[str, Any] = {}
    if method.endswith("_storm_domains"):
        # STORM's own domain step (centring, cosine geometry, smoothing, k-means) on another representation, alone.
        name = "PCA" if method == "pca_storm_domains" else "expression components"
        if method == "components_storm_domains":
            z = st.pp.expression_components(slide.sdata["table"])
        key = f"X_baseline_seed{seed}"
        slide.sdata["table"].obsm[key] = z
        out = st.tl.storm_domains(
            slide.sdata,
            n_domains=slide.n_domains,
            use_rep=key,
            random_state=seed,
            expression_pcs=0,
            smooth_steps=steps,
            copy=True,
        )
        del slide.sdata["table"].obsm[key]
        return out["table"].obs["storm_domain"].to_numpy(), {"use_rep": name, "width": z.shape[1]}
    if "_smooth_" in method:
        z = smooth_like_storm(z, smoothing_graph_of(slide.sdata), steps=steps, weight=weight)
        details.update({"smooth_graph": "storm_domains", "smooth_steps": steps, "smooth_weight": weight})
    if method.endswith("leiden"):
        labels, res = leiden_domains(z, slide.n_domains, random_state=seed)
        details["leiden_resolution"] = res
        return labels, details
    return kmeans_domains(z, slide.n_domains, random_state=seed), details


@dataclass
class StormSetup:
    """Which STORM model the run uses and how."""

    model: str | None
    init_config: str | None
    adapt_epochs: int
    modalities: str
    threads: int = 1
    level: str | None = None
    expression_pcs: int | None = None
    smooth_steps: int | None = None
    n_draws: int | None = None

    def describe(self) -> str:
        if self.init_config is not None:
            return (
                f"{self.init_config} trained from scratch on each slide ({self.adapt_epochs} epochs, self-supervised, "
                f"vocabulary = the slide's HVGs), one model per seed; {self._options()}"
            )
        name = "the bundled reference checkpoint" if self.model is None else self.model
        adapt = f", adapted {self.adapt_epochs} epochs to the slide (self-supervised)" if self.adapt_epochs else ""
        return f"{name}{adapt}; {self._options()}"

    def _options(self) -> str:
        level = "the default embedding level" if self.level is None else f"embedding level {self.level!r}"
        pcs = "default" if self.expression_pcs is None else self.expression_pcs
        steps = "" if self.smooth_steps is None else f", smooth_steps={self.smooth_steps}"
        draws = "" if self.n_draws is None else f", storm_embed n_draws={self.n_draws}"
        return f"{level}; storm_domains expression_pcs={pcs}{steps}{draws}"


def storm_labels(slide: Slide, setup: StormSetup, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``storm_embed`` then ``storm_domains(n_domains=k)`` on a copy of the slide's table.

    Parameters
    ----------
    slide
        The slide.
    setup
        Model and options.
    seed
        Seed of the model initialisation (``init_config``), of the adaptation and of the clustering.

    Returns
    -------
    ``(labels, details)``.
    """
    import torch

    # scanpy's and scikit-learn's thread-pool limits reset OpenMP (torch's pool too) when they exit: pin it again.
    torch.set_num_threads(setup.threads)
    if setup.init_config is not None:
        model: Any = st.models.StormModel(setup.init_config, slide.hvgs, seed=seed)
    else:
        model = st.models.StormModel.from_pretrained(setup.model)
    # copy=True: the slide's own table stays untouched across seeds and methods.
    sdata = st.tl.storm_embed(
        slide.sdata,
        model,
        modalities=setup.modalities,
        **({} if setup.level is None else {"level": setup.level}),
        **({} if setup.n_draws is None else {"n_draws": setup.n_draws}),
        adapt_epochs=setup.adapt_epochs,
        random_state=seed,
        device="cpu",
        copy=True,
        verbose=False,
    )
    options = {} if setup.expression_pcs is None else {"expression_pcs": setup.expression_pcs}
    if setup.smooth_steps is not None:
        options["smooth_steps"] = setup.smooth_steps
    st.tl.storm_domains(sdata, n_domains=slide.n_domains, random_state=seed, **options)
    table = sdata["table"]
    details = {
        "modalities": "+".join(table.uns["storm"]["X_storm"]["modalities"]),
        "level": table.uns["storm"]["X_storm"]["level"],
        "n_draws": table.uns["storm"]["X_storm"]["n_draws"],
        "architecture": model.config.name,
        "domain_params": json.dumps({k: v for k, v in table.uns["storm"]["storm_domain"].items() if k != "tool"}),
    }
    return table.obs["storm_domain"].to_numpy(), details


def external_labels(
    slide: Slide, method: str, seed: int, *, python: Path, work: Path, timeout_s: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run a published method in its own environment (``benchmarks/_domain_external.py``) and read its domains.

    Parameters
    ----------
    slide
        The slide; only raw counts, positions in microns and the platform are handed over (no labels).
    method
        ``spagcn``, ``graphst`` or ``novae``.
    seed
        Seed passed to the method.
    python
        Interpreter of the environment holding the method.
    work
        Scratch folder.
    timeout_s
        Give up after this many seconds.

    Returns
    -------
    ``(labels, details)`` (details: the method's settings and its CPU seconds).
    """
    import anndata as ad

    si = st.io.resolve(slide.sdata, image_key=None, mpp=None)
    path = work / f"{slide.name}_input.h5ad"
    if not path.exists():
        table = si.table
        x = table.X.astype(np.float32)
        handed = ad.AnnData(x, obs=pd.DataFrame(index=table.obs_names), var=pd.DataFrame(index=table.var_names))
        handed.obsm["spatial"] = np.asarray(si.centers_um, dtype=np.float64)
        handed.uns["platform"] = si.platform
        handed.write_h5ad(path)
    out = work / f"{slide.name}_{method}_{seed}.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cmd = [str(python), str(EXTERNAL_SCRIPT), method, str(path), str(slide.n_domains), str(seed), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=work)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{method} failed on {slide.name}: {' | '.join(tail)}")
    settings_line = [line for line in proc.stdout.splitlines() if line.startswith("SETTINGS ")]
    details = json.loads(settings_line[-1][len("SETTINGS ") :]) if settings_line else {}
    labels = pd.read_csv(out, index_col=0)["domain"].reindex(slide.labels.index)
    return labels.astype(str).to_numpy(), details


# --------------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------------
def load_slide(name: str, *, seeds: Sequence[int], n_hvg: int, n_pcs: int, timer: Timer) -> Slide:
    """Load a benchmark slide through storm_sc and compute its (seed-dependent) PCA once.

    Parameters
    ----------
    name
        A key of :data:`DATASETS`.
    seeds
        Seeds of the PCA solver.
    n_hvg, n_pcs
        Highly variable genes and principal components of the baselines.
    timer
        Collects loading and PCA CPU time.

    Returns
    -------
    The :class:`Slide`.
    """
    dataset = DATASETS[name]
    sdata = timer.measure("load", dataset.load)
    table = sdata["table"]
    labels = table.obs[dataset.label_key].astype(object)
    labels = labels.where(labels.notna() & ~labels.isin(dataset.unlabelled))
    n_domains = int(labels.dropna().nunique())
    pcs, hvgs = {}, []
    for seed in seeds:
        pcs[seed], hvgs = timer.measure("pca", lambda s=seed: hvg_pca(table, n_hvg=n_hvg, n_pcs=n_pcs, random_state=s))
    logger.info("%s: %d spots, %d labelled, %d layers", name, table.n_obs, int(labels.notna().sum()), n_domains)
    return Slide(name, sdata, labels.astype(object).where(labels.notna(), None), n_domains, pcs, hvgs)


def run(
    slides: list[Slide],
    methods: list[str],
    seeds: Sequence[int],
    *,
    storm: StormSetup | None,
    external_python: Path | None,
    external_timeout_s: int,
    external_seeds: int | None = None,
    work: Path,
    timer: Timer,
    smooth_steps: int | None = None,
) -> pd.DataFrame:
    """Every method x slide x seed: domains and their scores.

    Parameters
    ----------
    slides
        Loaded slides.
    methods
        Method names in table order.
    seeds
        Seeds.
    storm
        STORM setup (``None``: the STORM row is not run).
    external_python
        Interpreter for the published methods.
    external_timeout_s
        Time limit of one external run.
    external_seeds
        Run the published methods on the first this many seeds only (``None``: all).
    work
        Scratch folder.
    timer
        Collects CPU time per method.
    smooth_steps
        Smoothing steps of the smoothed baselines (``None``: ``storm_domains``' default).

    Returns
    -------
    One row per method x slide x seed (``ari``, ``nmi``, ``status`` and the method's details).
    """
    rows = []
    for slide in slides:
        for method in methods:
            method_seeds = seeds[:external_seeds] if method in EXTERNAL_METHODS and external_seeds else seeds
            for seed in method_seeds:
                row: dict[str, Any] = {
                    "dataset": slide.name,
                    "method": method,
                    "seed": seed,
                    "n_domains": slide.n_domains,
                }
                c0 = time.process_time()
                try:
                    if method == "storm":
                        assert storm is not None
                        labels, details = storm_labels(slide, storm, seed)
                    elif method in EXTERNAL_METHODS:
                        assert external_python is not None
                        labels, details = external_labels(
                            slide, method, seed, python=external_python, work=work, timeout_s=external_timeout_s
                        )
                    else:
                        labels, details = baseline_labels(slide, method, seed, smooth_steps=smooth_steps)
                except (RuntimeError, subprocess.TimeoutExpired, FileNotFoundError) as err:
                    logger.warning("%s on %s (seed %d) failed: %s", method, slide.name, seed, err)
                    rows.append({**row, "status": f"failed: {err}"[:300]})
                    continue
                finally:
                    timer.cpu[method] = timer.cpu.get(method, 0.0) + time.process_time() - c0
                scores = clustering_scores(slide.labels, labels)
                if method in EXTERNAL_METHODS and "cpu_s" in details:
                    timer.cpu[method] += details["cpu_s"]  # the child's CPU time is not this process's
                rows.append({**row, **scores, "n_found": len(pd.unique(labels)), "status": "ok", **details})
                logger.info("%s %s seed %d: ARI %.3f NMI %.3f", slide.name, method, seed, scores["ari"], scores["nmi"])
    return pd.DataFrame(rows)


def summary_table(
    per_seed: pd.DataFrame, methods: list[str], columns: dict[str, list[str]], timer: Timer
) -> pd.DataFrame:
    """ARI and NMI per method and dataset (or group of slides), with CPU seconds.

    A single slide shows mean ± sd over seeds; a group of slides the mean ± sd over its slides of each slide's
    mean over seeds.

    Parameters
    ----------
    per_seed
        Output of :func:`run`.
    methods
        Row order.
    columns
        Column name -> the datasets it summarises, in column order.
    timer
        CPU seconds per method (whole run).

    Returns
    -------
    One row per method.
    """
    rows = []
    for method in methods:
        row = {"method": method}
        for name, datasets in columns.items():
            sel = per_seed[(per_seed["method"] == method) & per_seed["dataset"].isin(datasets)]
            ok = sel[sel["status"] == "ok"] if "status" in sel else sel
            for metric in ("ari", "nmi"):
                if metric not in ok:
                    row[f"{name} {metric.upper()}"] = "n/a"
                elif len(datasets) == 1:
                    row[f"{name} {metric.upper()}"] = mean_sd(ok[metric])
                else:
                    row[f"{name} {metric.upper()}"] = mean_sd(ok.groupby("dataset")[metric].mean())
            if len(ok) < len(sel):
                row[f"{name} ARI"] += f" ({len(sel) - len(ok)} failed)"
        row["CPU s"] = f"{timer.cpu.get(method, 0.0):.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Spatial domains vs manual layers: STORM and baselines.")
    parser.add_argument("--data-dir", type=Path, default=None, help="default: $STORM_SC_DATA_DIR or ../shared/data")
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=sorted([*DATASETS, *GROUPS]),
        default=list(DEFAULT_DATASETS),
        help="slides, or a group as one summary column: 'her2st' (its 8 annotated sections), 'dlpfc' (every DLPFC "
        "section in the data folder)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: first seed, <= {QUICK_ADAPT_EPOCHS} STORM epochs"
    )
    parser.add_argument("--model", default=None, help="STORM checkpoint path or registered name (default: reference)")
    parser.add_argument(
        "--init-config",
        default=None,
        help="instead of a checkpoint, train this architecture (e.g. storm-tiny) from scratch on each slide",
    )
    parser.add_argument(
        "--adapt-epochs", type=int, default=0, help="self-supervised epochs on the slide before embedding"
    )
    parser.add_argument("--modalities", default="auto", choices=["auto", "image", "expression", "both"])
    parser.add_argument(
        "--level",
        default=None,
        choices=["levels", "joint", "observation", "niche", "region"],
        help="which embedding storm_embed writes (its `level`; default: storm_embed's default)",
    )
    parser.add_argument(
        "--n-draws",
        type=int,
        default=None,
        help="storm_embed's gene-token draws averaged per observation (default: its default)",
    )
    parser.add_argument(
        "--expression-pcs",
        type=int,
        default=None,
        help="storm_domains' expression components beside the embedding (default: its default; 0: embedding alone)",
    )
    parser.add_argument(
        "--smooth-steps",
        type=int,
        default=None,
        help="storm_domains' smoothing steps for STORM and the smoothed baselines (default: its default)",
    )
    parser.add_argument("--no-storm", action="store_true", help="baselines only")
    parser.add_argument("--n-hvg", type=int, default=2000, help="highly variable genes of the baselines")
    parser.add_argument("--n-pcs", type=int, default=30, help="principal components of the baselines")
    parser.add_argument("--external-python", type=Path, default=None, help="python of an env with SpaGCN/GraphST/Novae")
    parser.add_argument(
        "--external",
        nargs="+",
        choices=EXTERNAL_METHODS,
        default=["spagcn", "graphst"],
        help="published methods to run",
    )
    parser.add_argument("--external-timeout", type=int, default=3600, help="seconds per external run")
    parser.add_argument(
        "--external-seeds", type=int, default=None, help="run the published methods on the first N seeds only"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", action="append", type=Path, default=[], help=".md (tables) or .csv; repeatable")
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out files")
    return parser.parse_args(argv)


def _check(args: argparse.Namespace, data_dir: Path) -> None:
    problems = []
    if args.adapt_epochs < 0:
        problems.append(f"--adapt-epochs must be >= 0, got {args.adapt_epochs}")
    if args.init_config is not None:
        if args.model is not None:
            problems.append("give either --model or --init-config, not both")
        if args.init_config not in st.models.list_configs():
            problems.append(f"--init-config {args.init_config!r} is not one of {st.models.list_configs()}")
        if args.adapt_epochs < 1:
            problems.append("--init-config trains a fresh model on the slide: give --adapt-epochs >= 1")
    if args.n_hvg < 2 or args.n_pcs < 2 or args.threads < 1:
        problems.append("--n-hvg and --n-pcs must be >= 2 and --threads >= 1")
    if args.smooth_steps is not None and args.smooth_steps < 0:
        problems.append(f"--smooth-steps must be >= 0, got {args.smooth_steps}")
    if args.external_python is not None and not args.external_python.is_file():
        problems.append(f"--external-python {args.external_python} is not a file")
    problems += out_path_problems(args.out, data_dir, args.overwrite)
    if problems:
        raise SystemExit("; ".join(problems) + ".")


def _storm_setup(args: argparse.Namespace) -> tuple[StormSetup | None, str]:
    """The STORM setup, or ``None`` with the reason it is not run."""
    if args.no_storm:
        return None, "left out (--no-storm)"
    epochs = min(args.adapt_epochs, QUICK_ADAPT_EPOCHS) if args.quick else args.adapt_epochs
    setup = StormSetup(
        args.model,
        args.init_config,
        epochs,
        args.modalities,
        args.threads,
        args.level,
        args.expression_pcs,
        args.smooth_steps,
        args.n_draws,
    )
    if args.init_config is None:
        try:
            st.models.StormModel.from_pretrained(args.model)
        except (FileNotFoundError, KeyError, ValueError) as err:
            reason = f"not run: {err}".split("\n")[0]
            if args.model is None:
                reason = "not run: no reference checkpoint in this build of storm_sc (pass --model or --init-config)"
            return None, reason
    return setup, setup.describe()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    args = _parse_args(argv)
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    _check(args, data_dir)
    import torch

    torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    progress_only(logger)

    group_map = groups(data_dir)
    names = expand(args.datasets, group_map)
    with offline_data(data_dir, {d: DATASETS[d].files for d in names}, prefix="storm_domains_bench_") as work:
        storm, storm_text = _storm_setup(args)
        methods = (["storm"] if storm is not None else []) + list(BASELINE_METHODS)
        external_note = "not run (no --external-python)"
        if args.external_python is not None and not args.quick:
            methods += list(args.external)
            n_ext = len(seeds) if args.external_seeds is None else min(args.external_seeds, len(seeds))
            external_note = f"{', '.join(args.external)} run with {args.external_python} on {n_ext} seed(s)"
        elif args.quick:
            external_note = "not run (--quick)"

        timer = Timer()
        t0 = time.perf_counter()
        slides = [load_slide(d, seeds=seeds, n_hvg=args.n_hvg, n_pcs=args.n_pcs, timer=timer) for d in names]
        per_seed = run(
            slides,
            methods,
            seeds,
            storm=storm,
            external_python=args.external_python,
            external_timeout_s=args.external_timeout,
            external_seeds=args.external_seeds,
            work=work,
            timer=timer,
            smooth_steps=args.smooth_steps,
        )
        wall = time.perf_counter() - t0

    steps, weight = smoothing_defaults(args.smooth_steps)
    summary = summary_table(per_seed, methods, {d: list(group_map.get(d, (d,))) for d in args.datasets}, timer)
    header = [
        "Spatial domains vs manual annotations — "
        + "; ".join(
            f"{s.name}: {int(s.labels.notna().sum())} labelled spots, k = {s.n_domains}{', H&E' if s.has_image else ''}"
            for s in slides
        ),
        f"seeds {', '.join(map(str, seeds))}; baselines: {args.n_hvg} HVGs (seurat), {args.n_pcs} PCs; smoothing as "
        f"storm_domains (a spot grid's first ring, else 6 nearest neighbours; {steps} steps, weight {weight})",
        f"STORM: {storm_text}",
        f"published methods: {external_note}",
        f"load CPU {timer.cpu.get('load', 0.0):.1f} s, PCA CPU {timer.cpu.get('pca', 0.0):.1f} s; total wall "
        f"{wall:.0f} s; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{args.threads} (set before every STORM call)",
    ]
    notes = (
        "ARI / NMI against the manual labels (unlabelled spots excluded), mean ± sd over seeds; k = number of "
        "annotated layers for every method. CPU s: process CPU seconds of the method over all datasets and seeds "
        "(published methods: their own process)."
    )
    publish(args.out, header, [(None, summary)], notes, per_seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
