"""Benchmark: predict spot expression from H&E on held-out her2st sections.

Every method is trained on some sections and scored on a section it never saw, in the same run:

* ``ridge_stain_texture``: ridge regression on hand-crafted stain (colour deconvolution) and texture statistics at
  several physical field sizes around each spot;
* ``ridge_pixels``: ridge regression on the raw pixels of an 8 x 8 thumbnail of the 110 um around each spot;
* ``mean``: the training mean of each gene (its correlation is undefined, scored 0);
* ``storm``: STORM trained on the training sections, predicting from H&E and positions only (when
  ``storm_sc`` provides the training API) with its expression readout (a ridge on its H&E-only embeddings, fitted
  on the training sections by training);
* ``storm_head``: the same model predicting with its network prediction head;
* ``storm_pretrained`` (``--storm-model``): a pretrained checkpoint, frozen, with its readout fitted per split.

Scores: Pearson correlation per gene across the spots of the held-out section, averaged over (a) the 50 most
variable genes of the training sections and (b) the HisToGene 785-gene her2st panel (genes present in every
section). Splits: leave one section out within a patient, and leave one patient out when images of two or more
patients are present.

Run from the repository root::

    python benchmarks/expression_her2st.py --out results.md --out results.csv

See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    # Run as a script (python benchmarks/expression_her2st.py): make the `benchmarks` package importable.
    sys.path.insert(0, str(REPO_ROOT))

import storm_sc as st  # noqa: E402
from benchmarks._baseline_features import pixel_features, stain_texture_features, window_side_px  # noqa: E402
from benchmarks._data_dir import default_data_dir  # noqa: E402
from benchmarks._metrics import mse_per_gene, pearson_per_gene  # noqa: E402
from benchmarks._report import mean_sd, publish  # noqa: E402
from benchmarks._ridge import fit_ridge  # noqa: E402
from benchmarks._spatial_smoothing import smooth_over_neighbours  # noqa: E402
from benchmarks._splits import Split, across_patient_splits, inner_groups, patient_of, within_patient_splits  # noqa: E402
from benchmarks._targets import log1p_normalised, panel_present, top_hvgs  # noqa: E402
from storm_sc.datasets._her2st import her2st_local_image  # noqa: E402
from storm_sc.pp._expression import TARGET_SUM as STORM_TARGET_SUM  # noqa: E402

logger = logging.getLogger("storm_sc.benchmarks")

PANEL_FILE = ("her2st", "her_hvg_cut_1000_from_HisToGene.npy")
DATA_SUBDIR = ("her2st", "data")
DEFAULT_FIELDS_UM = (55.0, 110.0, 220.0)
# The benchmark's STORM by default: the architecture and patch size of the shipped reference checkpoint, the setting
# the tables of the benchmarks page were measured with (storm-small at 20 epochs is hours of CPU per fold here).
REFERENCE_CONFIG = "storm-tiny"
REFERENCE_PATCH_PX = 64
QUICK_SECTIONS = 2
N_HVG = 50
NA_ONE_PATIENT = "n/a (only one patient with images)"
NA_LEFT_OUT = "n/a (left out by --schemes)"
SCHEMES = ("within", "across")
GENE_SETS = ("hvg50", "histogene")


# --------------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class Section:
    """One loaded section: targets, positions and the features every baseline needs."""

    name: str
    expr: pd.DataFrame
    xy_um: np.ndarray
    features: dict[str, pd.DataFrame]
    sdata: Any = None


@dataclass
class Timer:
    """CPU and wall seconds spent per method, added up over the run."""

    cpu: dict[str, float] = field(default_factory=dict)
    wall: dict[str, float] = field(default_factory=dict)

    def add(self, key: str, cpu: float, wall: float) -> None:
        self.cpu[key] = self.cpu.get(key, 0.0) + cpu
        self.wall[key] = self.wall.get(key, 0.0) + wall

    def measure(self, key: str, fn: Callable[[], Any]) -> Any:
        c0, w0 = time.process_time(), time.perf_counter()
        try:
            return fn()
        finally:
            self.add(key, time.process_time() - c0, time.perf_counter() - w0)


def _section_files(data_dir: Path, section: str) -> dict[str, Path] | None:
    """Counts, spot file and H&E image of a section in the data folder (upstream her2st layout), if all exist."""
    root = data_dir.joinpath(*DATA_SUBDIR)
    counts = sorted(root.joinpath("ST-cnts").glob(f"{section}.tsv*"))
    spots = root / "ST-spotfiles" / f"{section}_selection.tsv"
    image = her2st_local_image(section, data_dir)
    if not (counts and spots.is_file() and image is not None):
        return None
    return {"counts": counts[0], "spots": spots, "image": image}


def sections_with_images(data_dir: Path) -> list[str]:
    """Sections that have counts, spot positions and an H&E image in the data folder.

    Parameters
    ----------
    data_dir
        Folder holding ``her2st/data/`` in the upstream layout (``ST-cnts/<section>.tsv.gz``,
        ``ST-spotfiles/<section>_selection.tsv``, ``ST-imgs/<patient>/<section>/<image>``).

    Returns
    -------
    Sorted section ids.

    Examples
    --------
    >>> sections_with_images(Path("/nonexistent"))
    []
    """
    image_root = data_dir.joinpath(*DATA_SUBDIR, "ST-imgs")
    if not image_root.is_dir():
        return []
    found = []
    for folder in sorted(image_root.glob("*/*")):
        try:
            patient_of(folder.name)
        except ValueError:
            continue
        if folder.is_dir() and _section_files(data_dir, folder.name) is not None:
            found.append(folder.name.upper())
    return found


def _registered_local_images() -> set[str]:
    """her2st sections whose registered H&E image (and counts) storm_sc's dataset loader finds locally."""
    table = st.datasets.available()
    calls = table.index[table["image"] & table["local"]]
    return {m.group(1) for m in (re.fullmatch(r'her2st\("(\w+)"\)', c) for c in calls) if m}


def read_section(section: str, data_dir: Path) -> Any:
    """One section as a SpatialData, through storm_sc's loaders; never downloads.

    ``st.datasets.her2st`` is used when the package's registry knows the section's image and it is in the data
    folder; images the registry does not list (other patients' sections placed in the data folder) are read
    with ``st.io.read_st`` from the same files.

    Parameters
    ----------
    section
        Section id.
    data_dir
        The data folder (also ``st.settings.data_dir`` during the run).

    Returns
    -------
    The section's SpatialData.
    """
    if section in _registered_local_images():
        return st.datasets.her2st(section, image=True)
    files = _section_files(data_dir, section)
    if files is None:
        raise FileNotFoundError(f"her2st section {section}: counts, spot file or image missing under {data_dir}.")
    return st.io.read_st(files["counts"], files["spots"], files["image"], library_id=section)


def load_panel(data_dir: Path) -> list[str]:
    """The HisToGene 785-gene her2st panel.

    Parameters
    ----------
    data_dir
        Folder holding ``her2st/her_hvg_cut_1000_from_HisToGene.npy``.

    Returns
    -------
    Gene symbols in the file's order.
    """
    path = data_dir.joinpath(*PANEL_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"HisToGene gene panel not found at {path}; it is data/her_hvg_cut_1000.npy of maxpmx/HisToGene "
            "@ 44ff75b9b68949796f27f1b4121d36ea4cba8bf3. Put it there or pass --data-dir."
        )
    return [str(g) for g in np.load(path, allow_pickle=False).tolist()]


def _in_memory(si: Any) -> Any:
    """The SpatialInput with its full-resolution image decoded once into memory (a single-level DataArray)."""
    from spatialdata import get_pyramid_levels
    from xarray import DataTree

    image = si.image
    level0 = get_pyramid_levels(image, n=0) if isinstance(image, DataTree) else image
    return dataclasses.replace(si, image=level0.copy(data=np.asarray(level0.data)))


def _patches(si: Any, *, patch_um: float, patch_px: int) -> np.ndarray:
    ds = st.pp.patch_dataset(si, patch_um=patch_um, patch_px=patch_px)
    return ds.to_numpy(batch_size=256, verbose=False).transpose(0, 2, 3, 1)


def load_section(
    section: str,
    *,
    data_dir: Path,
    fields_um: Sequence[float],
    work_mpp: float,
    thumb_um: float,
    thumb_px: int,
    keep_sdata: bool,
    timer: Timer,
    target_sum: float = STORM_TARGET_SUM,
) -> Section:
    """Load one section through storm_sc and compute every baseline's features from its image, decoded once.

    Parameters
    ----------
    section
        her2st section id.
    data_dir
        The data folder.
    fields_um
        Field sizes of the stain/texture features.
    work_mpp
        Resolution (microns per pixel) of the stain/texture windows.
    thumb_um, thumb_px
        Field and size of the raw-pixel thumbnails.
    keep_sdata
        Keep the SpatialData (for STORM); otherwise the image is released after the features are computed.
    timer
        Collects CPU time of loading and of each feature extractor.
    target_sum
        Targets are log1p of counts per ``target_sum``.

    Returns
    -------
    The :class:`Section`.
    """
    sdata = timer.measure("load", lambda: read_section(section, data_dir))
    si = timer.measure("load", lambda: _in_memory(st.io.resolve(sdata)))
    if not si.has_image:
        raise ValueError(f"her2st section {section} has no H&E image; choose sections with images (--sections).")
    expr = log1p_normalised(si.table, target_sum=target_sum)
    side = window_side_px(max(fields_um), work_mpp)

    def _stain() -> pd.DataFrame:
        windows = _patches(si, patch_um=max(fields_um), patch_px=side)
        return stain_texture_features(windows, work_mpp=max(fields_um) / side, fields_um=fields_um, verbose=False)

    features = {
        "stain_texture": timer.measure("ridge_stain_texture", _stain),
        "pixels": timer.measure(
            "ridge_pixels", lambda: pixel_features(_patches(si, patch_um=thumb_um, patch_px=thumb_px))
        ),
    }
    logger.info("%s: %d spots, %d genes, %.3g um/px", section, si.n_obs, si.table.n_vars, si.mpp)
    return Section(section, expr, np.asarray(si.centers_um), features, sdata if keep_sdata else None)


# --------------------------------------------------------------------------------------------------------------------
# Methods
# --------------------------------------------------------------------------------------------------------------------
class Method:
    """A predictor of expression from the image: fitted on training sections, applied to held-out sections.

    ``fit`` receives every gene set scored in the split, so that a method may fit one model per set (ridge tunes
    its penalty per set) or one model for all of them (STORM).
    """

    name: str = ""
    description: str = ""
    # Whether predictions are on the targets' own scale, so that their squared error compares with the others'.
    mse_comparable: bool = True

    def fit(self, train: list[Section], gene_sets: dict[str, list[str]]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, section: Section, gene_set: str) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def details(self, gene_set: str) -> dict[str, Any]:
        """Per-fold facts worth recording (e.g. the chosen ridge penalty)."""
        return {}


class RidgeMethod(Method):
    """Standardised features -> ridge, penalty chosen by leave-one-training-section-out (or spatial blocks)."""

    def __init__(self, name: str, feature_key: str, description: str) -> None:
        self.name = name
        self.feature_key = feature_key
        self.description = description

    def fit(self, train: list[Section], gene_sets: dict[str, list[str]]) -> None:
        x = np.vstack([s.features[self.feature_key].to_numpy() for s in train])
        sections = np.concatenate([[s.name] * len(s.expr) for s in train])
        groups = inner_groups(sections, np.concatenate([s.xy_um[:, 0] for s in train]))
        self.models, self.alphas = {}, {}
        for set_name, genes in gene_sets.items():
            y = np.vstack([s.expr[genes].to_numpy(dtype=np.float64) for s in train])
            self.models[set_name], self.alphas[set_name] = fit_ridge(x, y, groups)

    def predict(self, section: Section, gene_set: str) -> np.ndarray:
        return self.models[gene_set].predict(section.features[self.feature_key].to_numpy())

    def details(self, gene_set: str) -> dict[str, Any]:
        return {"ridge_alpha": self.alphas[gene_set]}


class SmoothedMethod(Method):
    """Another method's predictions, each spot's mixed once with the mean of its 6 nearest spots' (the rule of
    ``storm_domains``' smoothing, weight 0.5): the simplest use of spatial context, which STORM's readout has
    through its niche inputs and the hand-crafted features lack.

    It must follow that method in the list of methods: it reuses the model fitted for the split.
    """

    def __init__(self, base: Method) -> None:
        self.base = base
        self.name = f"{base.name}_smoothed"
        self.mse_comparable = base.mse_comparable
        self.description = f"{base.name}, each prediction mixed with its 6 nearest spots' mean (1 step, weight 0.5)"

    def fit(self, train: list[Section], gene_sets: dict[str, list[str]]) -> None:
        """Nothing to fit: the base method was fitted on this split just before."""

    def predict(self, section: Section, gene_set: str) -> np.ndarray:
        return smooth_over_neighbours(self.base.predict(section, gene_set), section.xy_um)

    def details(self, gene_set: str) -> dict[str, Any]:
        return self.base.details(gene_set)


class MeanMethod(Method):
    """Predicts every spot as the training mean of each gene."""

    name = "mean"
    description = "training mean per gene (Pearson undefined, scored 0)"

    def fit(self, train: list[Section], gene_sets: dict[str, list[str]]) -> None:
        self.means = {k: np.vstack([s.expr[g].to_numpy() for s in train]).mean(axis=0) for k, g in gene_sets.items()}

    def predict(self, section: Section, gene_set: str) -> np.ndarray:
        mean = self.means[gene_set]
        return np.broadcast_to(mean, (len(section.expr), len(mean))).copy()


class StormMethod(Method):
    """STORM trained from scratch on the training sections with storm_sc's public API (``st.training.pretrain``).

    One model per split, its vocabulary the union of the scored gene sets. The early-stopping validation holds out
    a training patient (across patients) or a training section (within a patient; a spatial block when there is
    only one) and never looks at the held-out section. Predictions use H&E and spot positions only
    (``StormModel.predict_expression``). Its output, a Gaussian mean of log1p(counts per 1e4), is the
    benchmark's default target scale; with another ``--target-sum`` it is mapped there, and since a linear fit on
    one log scale is not one on another, that costs it correlation (measured: a ridge fitted on counts per 1e4 and
    mapped to counts per 1e6 loses ~0.05 r on the panel), and its squared error is not reported.
    """

    name = "storm"

    def __init__(
        self,
        *,
        config: str,
        max_epochs: int,
        seed: int,
        target_sum: float = STORM_TARGET_SUM,
        patch_px: int | None = None,
    ) -> None:
        self.target_sum = target_sum
        self.mse_comparable = target_sum == STORM_TARGET_SUM
        self.config = st.models.get_config(config, image_size=patch_px) if patch_px else st.models.get_config(config)
        self.max_epochs = max_epochs
        self.seed = seed
        size = f"{self.config.image_size} px patches of {self.config.patch_um:g} um"
        self.description = f"STORM ({config}, {size}, <= {max_epochs} epochs, seed {seed}) from H&E + positions"

    def fit(self, train: list[Section], gene_sets: dict[str, list[str]]) -> None:
        from storm_sc.training import TrainingSlide, pretrain

        # Lightning's banner lines ("GPU available ...") would interleave with the benchmark's own output.
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        vocabulary = sorted(set().union(*gene_sets.values()))
        # Validate on whole patients when the training set spans several, else on a whole training section.
        by_patient = len({patient_of(s.name) for s in train}) >= 2
        slides = [
            TrainingSlide(s.sdata, name=s.name, group=patient_of(s.name) if by_patient else s.name) for s in train
        ]
        # pretrain = a fresh model whose expression decoders start at the training genes' mean and variance.
        self.model = pretrain(
            slides,
            model=self.config,
            vocabulary=vocabulary,
            max_epochs=self.max_epochs,
            seed=self.seed,
            verbose=False,
        )
        self.run = self.model.manifest.get("run", {})
        self.gene_sets = gene_sets

    source = "auto"

    def predict(self, section: Section, gene_set: str) -> np.ndarray:
        pred = self.model.predict_expression(
            section.sdata, genes=self.gene_sets[gene_set], source=self.source, verbose=False
        )
        if list(pred.obs_names) != list(section.expr.index):
            raise RuntimeError(f"STORM returned rows in another order than the table of {section.name}.")
        return to_target_scale(pred.mean, self.target_sum)

    def details(self, gene_set: str) -> dict[str, Any]:
        return {"storm_epochs": self.run.get("epochs"), "storm_best_epoch": self.run.get("best_epoch")}


class _SameNetwork(StormMethod):
    """A row reusing the network that a :class:`StormMethod` trained for the split.

    It must follow that method in the list of methods.
    """

    summary = ""

    def __init__(self, trained: StormMethod) -> None:
        self.trained = trained
        self.target_sum, self.mse_comparable = trained.target_sum, trained.mse_comparable
        self.description = self.summary

    def fit(self, train: list[Section], gene_sets: dict[str, list[str]]) -> None:
        self.model, self.gene_sets, self.run = self.trained.model, self.trained.gene_sets, self.trained.run


class StormHeadMethod(_SameNetwork):
    """The same trained STORM model as :class:`StormMethod`, predicting with its network head instead of its readout."""

    name = "storm_head"
    source = "head"
    summary = "the same model, network prediction head"


class StormPerSetMethod(_SameNetwork):
    """The same trained STORM network as :class:`StormMethod`, its readout refitted for each scored gene set alone.

    The readout that training fits covers every gene of the vocabulary, its penalties chosen per stratum of gene
    variance over all of them; the ridge baselines fit each scored gene set on its own with a penalty chosen for
    it. This row puts STORM on the same footing: ``model.fit_expression_readout(training sections, genes=set)``
    with its defaults (one penalty for a set of 50 genes), what a user with paired slides does for the genes they
    study.
    """

    name = "storm_readout_per_set"
    summary = "the same network, its readout refitted on the training sections for each gene set"

    def fit(self, train: list[Section], gene_sets: dict[str, list[str]]) -> None:
        super().fit(train, gene_sets)
        self.models = {
            set_name: copy.deepcopy(self.trained.model).fit_expression_readout(
                [s.sdata for s in train], genes=genes, verbose=False
            )
            for set_name, genes in gene_sets.items()
        }

    def predict(self, section: Section, gene_set: str) -> np.ndarray:
        self.model = self.models[gene_set]
        return super().predict(section, gene_set)


class StormPretrainedMethod(Method):
    """A pretrained STORM checkpoint, frozen: only its expression readout is fitted on each split's training sections.

    This is how a pretrained model is meant to meet a new tissue: no gradient step, a closed-form ridge readout of
    its H&E-only embeddings (``StormModel.fit_expression_readout``). Scored genes outside the checkpoint's
    vocabulary are predicted as their training mean (scored 0); the CSV records how many were covered. Only
    meaningful for a checkpoint that never saw the sections scored here.
    """

    name = "storm_pretrained"

    def __init__(self, model: str, *, target_sum: float = STORM_TARGET_SUM) -> None:
        self.target_sum = target_sum
        self.mse_comparable = target_sum == STORM_TARGET_SUM
        self.source = model
        self.model = st.models.StormModel.from_pretrained(model)
        self.description = f"pretrained checkpoint {model!r} (frozen) + expression readout per split"

    def fit(self, train: list[Section], gene_sets: dict[str, list[str]]) -> None:
        # Vocabulary symbols match in any case (a human and a mouse gene of equal symbols share an entry).
        known = {g.upper() for g in self.model.vocabulary.symbols}
        wanted = sorted(set().union(*gene_sets.values()))
        self.covered = {g for g in wanted if g.upper() in known}
        self.means = {g: float(np.mean(np.concatenate([s.expr[g].to_numpy() for s in train]))) for g in wanted}
        self.gene_sets = gene_sets
        self.model.fit_expression_readout(
            {s.name: s.sdata for s in train}, genes=sorted(self.covered), min_detection=0.0, verbose=False
        )

    def predict(self, section: Section, gene_set: str) -> np.ndarray:
        genes = self.gene_sets[gene_set]
        inside = [g for g in genes if g in self.covered]
        pred = self.model.predict_expression(section.sdata, genes=inside, source="readout", verbose=False)
        out = np.tile(np.array([self.means[g] for g in genes]), (len(section.expr), 1))
        cols = {g: i for i, g in enumerate(genes)}
        out[:, [cols[g] for g in inside]] = to_target_scale(pred.mean, self.target_sum)
        return out

    def details(self, gene_set: str) -> dict[str, Any]:
        genes = self.gene_sets[gene_set]
        return {"storm_genes_covered": sum(g in self.covered for g in genes)}


def to_target_scale(log1p_1e4: np.ndarray, target_sum: float) -> np.ndarray:
    """storm_sc's predictions, log1p(counts per 1e4), on the benchmark's target scale log1p(counts per ``target_sum``).

    Parameters
    ----------
    log1p_1e4
        Predictions as storm_sc returns them.
    target_sum
        The benchmark's ``--target-sum``.

    Returns
    -------
    float64 predictions (unchanged values at the default scale).

    Examples
    --------
    >>> to_target_scale(np.log1p(np.array([1.0])), 1e6).round(3).tolist()
    [4.615]
    """
    pred = np.asarray(log1p_1e4, dtype=np.float64)
    if target_sum == STORM_TARGET_SUM:
        return pred
    return np.log1p(np.expm1(pred) * (target_sum / STORM_TARGET_SUM))


def storm_available() -> bool:
    """Whether storm_sc provides the public training API this benchmark uses."""
    try:
        import storm_sc.training
    except ImportError:
        return False
    return hasattr(st.models, "StormModel") and hasattr(storm_sc.training, "pretrain")


def baseline_methods() -> list[Method]:
    """The classical baselines, in table order."""
    stain_texture = RidgeMethod(
        "ridge_stain_texture",
        "stain_texture",
        "ridge on H&E deconvolution + texture statistics at several field sizes",
    )
    return [
        stain_texture,
        SmoothedMethod(stain_texture),
        RidgeMethod("ridge_pixels", "pixels", "ridge on raw pixels of an 8x8x3 thumbnail of 110 um"),
        MeanMethod(),
    ]


# --------------------------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------------------------
def _gene_sets(train: list[Section], genes: list[str], panel: list[str]) -> dict[str, list[str]]:
    train_expr = pd.concat([s.expr[genes] for s in train], axis=0)
    return {"hvg50": top_hvgs(train_expr, n_top=N_HVG), "histogene": panel_present(panel, genes)}


def run_splits(
    splits: list[Split],
    sections: dict[str, Section],
    methods: list[Method],
    *,
    genes: list[str],
    panel: list[str],
    timer: Timer,
) -> pd.DataFrame:
    """Fit every method on each split's training sections and score it on each held-out section.

    Parameters
    ----------
    splits
        Train/test splits.
    sections
        Loaded sections by id.
    methods
        Methods to run.
    genes
        Genes measured in every section.
    panel
        The HisToGene panel (genes absent from ``genes`` are ignored).
    timer
        Collects CPU time of fitting and predicting, per method.

    Returns
    -------
    One row per split x held-out section x method x gene set: mean Pearson, genes scored, mean MSE.
    """
    rows = []
    for split in splits:
        train = [sections[s] for s in split.train]
        gene_sets = _gene_sets(train, genes, panel)
        logger.info(
            "%s %s: train on %s; top HVGs %s ...",
            split.scheme,
            split.name,
            ",".join(split.train),
            gene_sets["hvg50"][:5],
        )
        for method in methods:
            timer.measure(method.name, lambda m=method, tr=train, gs=gene_sets: m.fit(tr, gs))
            for set_name, set_genes in gene_sets.items():
                for test_name in split.test:
                    test = sections[test_name]
                    pred = timer.measure(method.name, lambda m=method, t=test, k=set_name: m.predict(t, k))
                    truth = test.expr[set_genes].to_numpy()
                    r = pearson_per_gene(truth, pred)
                    rows.append(
                        {
                            "scheme": split.scheme,
                            "split": split.name,
                            "test_section": test_name,
                            "train_sections": " ".join(split.train),
                            "method": method.name,
                            "gene_set": set_name,
                            "n_genes": len(set_genes),
                            "n_genes_scored": int(np.isfinite(r).sum()),
                            "n_test_spots": len(truth),
                            "mean_pearson": float(np.nanmean(r)) if np.isfinite(r).any() else math.nan,
                            "median_pearson": float(np.nanmedian(r)) if np.isfinite(r).any() else math.nan,
                            "mean_mse": float(mse_per_gene(truth, pred).mean()) if method.mse_comparable else math.nan,
                            **method.details(set_name),
                        }
                    )
    return pd.DataFrame(rows)


def summary_table(
    per_fold: pd.DataFrame,
    methods: list[Method],
    *,
    metric: str,
    n_panel: int,
    n_panel_present: int,
    not_run: dict[str, str] | None = None,
    timer: Timer | None = None,
) -> pd.DataFrame:
    """Mean ± standard deviation over held-out sections of one metric, per method, scheme and gene set.

    Parameters
    ----------
    per_fold
        Output of :func:`run_splits`.
    methods
        Methods in table order.
    metric
        Column of ``per_fold`` to summarise (``"mean_pearson"`` or ``"mean_mse"``).
    n_panel, n_panel_present
        Size of the HisToGene panel and how many of its genes are measured.
    not_run
        Schemes (``"within_patient"``, ``"across_patient"``) that were not run, each with the reason its columns
        show instead of numbers.
    timer
        Adds a CPU-seconds column when given.

    Returns
    -------
    One row per method.
    """
    labels = {
        "hvg50": f"top-{N_HVG} HVG (train)",
        "histogene": f"HisToGene panel ({n_panel_present}/{n_panel})",
    }
    rows = []
    for method in methods:
        row: dict[str, str] = {"method": method.name}
        for scheme, scheme_label in (("within_patient", "within-patient"), ("across_patient", "across-patient")):
            for gene_set in GENE_SETS:
                col = f"{scheme_label}: {labels[gene_set]}"
                if scheme in (not_run or {}):
                    row[col] = not_run[scheme]
                    continue
                sel = per_fold[
                    (per_fold["method"] == method.name)
                    & (per_fold["scheme"] == scheme)
                    & (per_fold["gene_set"] == gene_set)
                ]
                row[col] = mean_sd(sel[metric])
        if timer is not None:
            row["CPU s"] = f"{timer.cpu.get(method.name, 0.0):.1f}"
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------------------------
def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Predict expression from H&E on held-out her2st sections: classical baselines and STORM.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding her2st/ (default: $STORM_SC_DATA_DIR or ../shared/data)",
    )
    parser.add_argument(
        "--sections", nargs="+", default=None, help="section ids (default: every section with an image)"
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run on the first {QUICK_SECTIONS} sections")
    parser.add_argument(
        "--schemes",
        nargs="+",
        choices=SCHEMES,
        default=list(SCHEMES),
        help="splits to run: leave one section out within a patient, leave one patient out (default: both)",
    )
    parser.add_argument(
        "--fields-um",
        nargs="+",
        type=float,
        default=list(DEFAULT_FIELDS_UM),
        help="field sizes (um) of the stain/texture features",
    )
    parser.add_argument("--work-mpp", type=float, default=1.0, help="um/px at which stain/texture filters run")
    parser.add_argument("--thumb-um", type=float, default=110.0, help="field (um) of the raw-pixel thumbnail")
    parser.add_argument("--thumb-px", type=int, default=8, help="side (px) of the raw-pixel thumbnail")
    parser.add_argument(
        "--target-sum",
        type=float,
        default=STORM_TARGET_SUM,
        help="targets are log1p of counts per this many (default 1e4, scanpy's and storm_sc's scale; 1e6: log1p(CPM), "
        "the scale of this benchmark's tables before 2026-11-30's last runs)",
    )
    parser.add_argument("--no-storm", action="store_true", help="leave STORM out even if storm_sc can train it")
    parser.add_argument(
        "--storm-config",
        default=REFERENCE_CONFIG,
        help=f"STORM architecture (st.models.list_configs(); default {REFERENCE_CONFIG}, the shipped reference's)",
    )
    parser.add_argument("--storm-epochs", type=int, default=20, help="maximum STORM training epochs per split")
    parser.add_argument(
        "--storm-patch-px",
        type=int,
        default=REFERENCE_PATCH_PX,
        help=f"pixels per side of STORM's patches (default {REFERENCE_PATCH_PX}, the shipped reference's 112 um "
        "patches; 0: the architecture's own)",
    )
    parser.add_argument(
        "--storm-model",
        default=None,
        help="also score this pretrained checkpoint (path or registered name), frozen, with a readout fitted per split",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every stochastic step (STORM training)")
    parser.add_argument(
        "--out",
        action="append",
        type=Path,
        default=[],
        help="write results: .md (tables) or .csv (per held-out section); repeatable",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing --out files")
    return parser.parse_args(argv)


def _check_options(args: argparse.Namespace) -> None:
    problems = []
    if any(not (math.isfinite(f) and f > 0) for f in args.fields_um) or len(set(args.fields_um)) != len(args.fields_um):
        problems.append(f"--fields-um must be distinct positive sizes in microns, got {args.fields_um}")
    for name in ("work_mpp", "thumb_um", "target_sum"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            problems.append(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.thumb_px < 1:
        problems.append(f"--thumb-px must be a positive number of pixels, got {args.thumb_px}")
    if args.storm_epochs < 1:
        problems.append(f"--storm-epochs must be at least 1, got {args.storm_epochs}")
    if args.storm_patch_px != 0 and args.storm_patch_px < 8:
        problems.append(f"--storm-patch-px must be at least 8 pixels, got {args.storm_patch_px}")
    if not args.no_storm and storm_available() and args.storm_config not in st.models.list_configs():
        problems.append(f"--storm-config {args.storm_config!r} is not one of {st.models.list_configs()}")
    if problems:
        raise SystemExit("; ".join(problems) + ".")


def _check_outputs(outs: list[Path], data_dir: Path, overwrite: bool) -> None:
    for out in outs:
        if out.suffix.lower() not in {".md", ".csv"}:
            raise SystemExit(f"--out {out}: the suffix must be .md (summary tables) or .csv (per held-out section).")
        if out.resolve().is_relative_to(data_dir.resolve()):
            raise SystemExit(f"--out {out} is inside the data folder {data_dir}; write results elsewhere.")
        if out.exists() and not overwrite:
            raise SystemExit(f"--out {out} exists; pass --overwrite to replace it or choose another path.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    args = _parse_args(argv)
    data_dir = (args.data_dir or default_data_dir()).expanduser()
    if not data_dir.joinpath("her2st").is_dir():
        raise SystemExit(f"no her2st/ folder in {data_dir}; pass --data-dir or set STORM_SC_DATA_DIR.")
    _check_options(args)
    _check_outputs(args.out, data_dir, args.overwrite)
    available = sections_with_images(data_dir)
    sections = [s.upper() for s in args.sections] if args.sections else available
    missing = [s for s in sections if s not in available]
    if missing:
        raise SystemExit(f"sections {missing} have no counts or image in {data_dir}; sections with both: {available}.")
    if args.quick:
        sections = sections[:QUICK_SECTIONS]
    if len(sections) < 2:
        raise SystemExit(f"need at least two sections with images to hold one out; got {sections}.")
    fields_um = tuple(args.fields_um)
    splits_within = within_patient_splits(sections) if "within" in args.schemes else []
    splits_across = across_patient_splits(sections) if "across" in args.schemes else []
    if not splits_within and not splits_across:
        raise SystemExit(
            f"no {' or '.join(args.schemes)}-patient split possible with sections {sections}: a within-patient split "
            "needs a patient with two sections, an across-patient split two patients."
        )
    # what the columns of a scheme without folds say instead of numbers
    why_none = {"within": "n/a (no patient with two sections)", "across": NA_ONE_PATIENT}
    not_run = {
        f"{scheme}_patient": why_none[scheme] if scheme in args.schemes else NA_LEFT_OUT
        for scheme, splits in (("within", splits_within), ("across", splits_across))
        if not splits
    }

    panel = load_panel(data_dir)
    # storm_sc's dataset loaders read their files from settings.data_dir.
    st.settings.data_dir = data_dir
    methods = baseline_methods()
    storm = None
    if not args.no_storm and storm_available():
        storm = StormMethod(
            config=args.storm_config,
            max_epochs=args.storm_epochs,
            seed=args.seed,
            target_sum=args.target_sum,
            patch_px=args.storm_patch_px or None,
        )
        methods += [storm, StormPerSetMethod(storm), StormHeadMethod(storm)]
    if args.storm_model is not None and storm_available():
        methods.append(StormPretrainedMethod(args.storm_model, target_sum=args.target_sum))
    np.random.seed(args.seed)

    timer = Timer()
    t0 = time.perf_counter()
    loaded = {
        s: load_section(
            s,
            data_dir=data_dir,
            fields_um=fields_um,
            work_mpp=args.work_mpp,
            thumb_um=args.thumb_um,
            thumb_px=args.thumb_px,
            keep_sdata=any(isinstance(m, StormMethod | StormPretrainedMethod) for m in methods),
            timer=timer,
            target_sum=args.target_sum,
        )
        for s in sections
    }
    genes = sorted(set.intersection(*(set(sec.expr.columns) for sec in loaded.values())))
    n_present = len(panel_present(panel, genes))
    per_fold = run_splits(splits_within + splits_across, loaded, methods, genes=genes, panel=panel, timer=timer)
    wall = time.perf_counter() - t0

    common = {
        "n_panel": len(set(panel)),
        "n_panel_present": n_present,
        "not_run": not_run,
    }
    pearson = summary_table(per_fold, methods, metric="mean_pearson", timer=timer, **common)
    mse = summary_table(per_fold, methods, metric="mean_mse", **common)
    scale = "log1p(CPM)" if args.target_sum == 1e6 else f"log1p(counts per {args.target_sum:g})"
    header = [
        f"her2st expression from H&E — sections {', '.join(sections)} "
        f"({len(splits_within)} within-patient folds, {len(splits_across)} across-patient folds)",
        f"genes in every section: {len(genes)}; HisToGene panel: {n_present} of {len(set(panel))} genes present; "
        f"stain/texture fields: {', '.join(f'{f:g}' for f in fields_um)} um; targets: {scale}",
        f"load + decode CPU: {timer.cpu.get('load', 0.0):.1f} s; total wall: {wall:.1f} s; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "STORM: "
        + (
            storm.description
            if storm is not None
            else "left out (--no-storm)"
            if args.no_storm
            else "not run (storm_sc has no training API)"
        ),
    ]
    storm_note = (
        "STORM predicts on this scale."
        if args.target_sum == STORM_TARGET_SUM
        else f"STORM predicts log1p(counts per {STORM_TARGET_SUM:g}), mapped to this scale; its squared error is not "
        "comparable and is not reported."
    )
    notes = (
        "Mean Pearson per gene across held-out spots, averaged over genes (genes constant on the held-out section "
        "are not scored), then mean ± sd over held-out sections. The mean predictor's Pearson is undefined and "
        f"scored 0. Targets: {scale}; every method is fitted on them. {storm_note} CPU s = feature extraction + "
        "fitting + predicting, all folds."
    )
    tables = [
        ("Mean Pearson r (higher is better)", pearson),
        (f"Mean squared error of {scale} (lower is better)", mse),
    ]
    publish(args.out, header, tables, notes, per_fold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
