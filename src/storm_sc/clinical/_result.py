"""The result of an outcome model: metrics, out-of-fold predictions, attention, and figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._evaluation import risk_groups

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@dataclass(eq=False)
class OutcomeResult:
    """Cross-validated prediction of a clinical outcome from whole-slide STORM features.

    Built by :func:`storm_sc.tl.fit_outcome`.

    Attributes
    ----------
    task
        ``"response"`` or ``"survival"``.
    metrics
        One row per model (the STORM aggregator, and the clinical baseline when given). Response: ``auroc`` with
        its 95% bootstrap CI. Survival: ``c_index`` with its CI, ``hr_per_sd`` (Cox hazard ratio per standard
        deviation of the out-of-fold score, with CI and p), and ``logrank_p`` of the high/low split at the median
        out-of-fold score. A CI is NaN where the bootstrap cannot resolve one (see :func:`storm_sc.tl.fit_outcome`).
    predictions
        One row per patient: ``fold``, the outcome, the out-of-fold ``score`` (response logit or log-hazard;
        higher = responder / higher risk), ``baseline_score`` when a baseline was given, and for survival
        ``risk_group`` (``"high"`` / ``"low"``).
    fold_metrics
        The metric of each fold on its own held-out patients.
    comparison
        STORM minus baseline, with a paired bootstrap CI and p-value (``None`` without a baseline).
    slides
        ``slide_id``, ``patient_id``, ``fold``, ``feature_file``, ``n_tiles``.
    attention
        ``slide_id`` -> ``(n_tiles,)`` attention of the held-out model over the patient's tiles (summing to 1 over
        all slides of a patient; uniform for mean pooling).
    params
        The settings of the run.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np, pandas as pd
    >>> from PIL import Image
    >>> import storm_sc as st
    >>> tmp = tempfile.TemporaryDirectory()
    >>> paths = {f"s{i}": f"{tmp.name}/s{i}.png" for i in range(4)}
    >>> for i, path in enumerate(paths.values()):
    ...     rgb = np.full((256, 256, 3), 240, np.uint8)  # glass
    ...     rgb[64:192, 64:192] = (180, 90, 160) if i % 2 else (230, 150, 190)  # purple or pink tissue
    ...     Image.fromarray(rgb).save(path)
    >>> model = st.models.StormModel("storm-tiny", ["GFAP", "MBP"], seed=0)
    >>> feats = st.tl.slide_features(paths, model, out_dir=f"{tmp.name}/features", mpp=1.75, device="cpu",
    ...                              verbose=False)
    >>> cohort = pd.DataFrame({"slide_id": list(paths), "patient_id": ["p1", "p2", "p3", "p4"],
    ...                        "response": [0, 1, 0, 1]})
    >>> result = st.tl.fit_outcome(cohort, feats, folds=2, epochs=2, n_bootstrap=20, verbose=False)
    >>> result.task, result.model_name, len(result.predictions), sorted(result.attention)
    ('response', 'storm_abmil', 4, ['s0', 's1', 's2', 's3'])
    >>> result.metrics.columns.tolist()
    ['auroc', 'auroc_ci_low', 'auroc_ci_high', 'n_patients', 'n_positive']
    >>> tmp.cleanup()
    """

    task: str
    metrics: pd.DataFrame
    predictions: pd.DataFrame
    fold_metrics: pd.DataFrame
    comparison: pd.DataFrame | None
    slides: pd.DataFrame
    attention: dict[str, np.ndarray] = field(repr=False)
    params: dict[str, Any]

    @property
    def model_name(self) -> str:
        """Name of the STORM row in :attr:`metrics`."""
        return str(self.metrics.index[0])

    def __repr__(self) -> str:
        main = "auroc" if self.task == "response" else "c_index"
        parts = []
        for name, row in self.metrics.iterrows():
            parts.append(f"{name}: {main}={row[main]:.3f} [{row[f'{main}_ci_low']:.3f}, {row[f'{main}_ci_high']:.3f}]")
        n_p = len(self.predictions)
        return (
            f"OutcomeResult({self.task}, {n_p} patients, {len(self.slides)} slides, {self.params['folds']}-fold; "
            + "; ".join(parts)
            + ")"
        )

    # -- tables ----------------------------------------------------------------------------------------------------
    def attention_table(self, slide_id: str) -> pd.DataFrame:
        """Tile positions and attention of one slide.

        Parameters
        ----------
        slide_id
            A slide of the cohort.

        Returns
        -------
        ``x_um``, ``y_um`` (tile centres), ``attention`` and ``relative_attention`` (attention times the number of
        tiles of the patient: 1 is uniform).

        Examples
        --------
        >>> result.attention_table("slide_01").nlargest(5, "attention")  # doctest: +SKIP
        """
        from ._features import read_slide_features

        path, att = self._slide(slide_id)
        sf = read_slide_features(path, thumbnail=False)
        patient = self.slides.set_index("slide_id").loc[slide_id, "patient_id"]
        n_patient = int(self.slides.loc[self.slides["patient_id"] == patient, "n_tiles"].sum())
        return pd.DataFrame({"x_um": sf.coords_um[:, 0], "y_um": sf.coords_um[:, 1], "attention": att,
                             "relative_attention": att * n_patient})  # fmt: skip

    def _slide(self, slide_id: str) -> tuple[str, np.ndarray]:
        if slide_id not in self.attention:
            raise KeyError(f"No slide {slide_id!r} in this result; slides: {sorted(self.attention)[:10]} ...")
        path = self.slides.set_index("slide_id").loc[slide_id, "feature_file"]
        return str(path), self.attention[slide_id]

    # -- figures ---------------------------------------------------------------------------------------------------
    def plot(self, ax: Axes | None = None) -> Axes:
        """Draw the ROC curve (response) or the Kaplan-Meier curves (survival).

        Parameters
        ----------
        ax
            Axes to draw into (default: a new figure).

        Returns
        -------
        The axes.

        Examples
        --------
        >>> result.plot()  # doctest: +SKIP
        """
        return self.plot_roc(ax) if self.task == "response" else self.plot_km(ax)

    def plot_roc(self, ax: Axes | None = None) -> Axes:
        """Out-of-fold ROC curves of STORM and of the baseline, AUROC with 95% CI in the legend.

        Parameters
        ----------
        ax
            Axes to draw into (default: a new figure).

        Returns
        -------
        The axes.

        Examples
        --------
        >>> result.plot_roc()  # doctest: +SKIP
        """
        from sklearn.metrics import roc_curve

        if self.task != "response":
            raise ValueError("ROC curves are for task='response'; use plot_km for survival.")
        ax = _axes(ax)
        y = self.predictions["response"].to_numpy()
        for col, name in self._score_columns():
            fpr, tpr, _ = roc_curve(y, self.predictions[col].to_numpy())
            row = self.metrics.loc[name]
            ax.plot(
                fpr, tpr, label=f"{name}: {row['auroc']:.2f} [{row['auroc_ci_low']:.2f}-{row['auroc_ci_high']:.2f}]"
            )
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set(xlabel="False positive rate", ylabel="True positive rate", xlim=(0, 1), ylim=(0, 1.01),
               title=f"Out-of-fold ROC ({len(y)} patients)")  # fmt: skip
        ax.legend(loc="lower right", title="AUROC [95% CI]")
        return ax

    def plot_km(self, ax: Axes | None = None, *, model: str | None = None) -> Axes:
        """Kaplan-Meier curves of the high- and low-risk halves (median out-of-fold score), with log-rank p.

        Parameters
        ----------
        ax
            Axes to draw into (default: a new figure).
        model
            Which score splits the patients: the STORM model (default) or the baseline's name in :attr:`metrics`.

        Returns
        -------
        The axes.

        Examples
        --------
        >>> result.plot_km()  # doctest: +SKIP
        """
        from lifelines import KaplanMeierFitter

        if self.task != "survival":
            raise ValueError("Kaplan-Meier curves are for task='survival'; use plot_roc for response.")
        columns = dict((name, col) for col, name in self._score_columns())
        name = model or self.model_name
        if name not in columns:
            raise ValueError(f"`model` must be one of {list(columns)}; got {model!r}.")
        ax = _axes(ax)
        p = self.predictions
        high = risk_groups(p[columns[name]].to_numpy())
        for label, sel, color in (("low risk", ~high, "tab:blue"), ("high risk", high, "tab:red")):
            kmf = KaplanMeierFitter(label=f"{label} (n={int(sel.sum())})")
            kmf.fit(p["time"].to_numpy()[sel], p["event"].to_numpy()[sel])
            kmf.plot_survival_function(ax=ax, ci_show=True, show_censors=True, color=color)
        row = self.metrics.loc[name]
        ax.set(xlabel="Time", ylabel="Survival probability", ylim=(0, 1.02),
               title=f"{name}: log-rank p={row['logrank_p']:.2g}, C-index {row['c_index']:.2f}")  # fmt: skip
        return ax

    def plot_attention(self, slide_id: str, ax: Axes | None = None, *, cmap: str = "inferno",
                       alpha: float = 0.6) -> Axes:  # fmt: skip
        """Tile attention of the held-out model drawn over the slide thumbnail.

        Values are relative to uniform attention (1 = the patient's average tile), on a log colour scale.

        Parameters
        ----------
        slide_id
            A slide of the cohort.
        ax
            Axes to draw into (default: a new figure).
        cmap
            Colour map of the heatmap.
        alpha
            Opacity of the heatmap over the thumbnail.

        Returns
        -------
        The axes.

        Examples
        --------
        >>> result.plot_attention("slide_01")  # doctest: +SKIP
        """
        from matplotlib.colors import LogNorm
        from matplotlib.ticker import FuncFormatter

        heat, thumb = self.attention_heatmap(slide_id)
        ax = _axes(ax)
        ax.imshow(thumb)
        finite = heat[np.isfinite(heat)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            norm = LogNorm(vmin=max(lo, 1e-3), vmax=max(hi, lo * 1.0001, 1e-3 * 1.0001))
            im = ax.imshow(np.ma.masked_invalid(heat), cmap=cmap, alpha=alpha, norm=norm, interpolation="nearest")
            bar = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention / uniform")
            # Plain numbers: the log axis' default "3 x 10^0" labels are wide, and were cut off in saved figures.
            # Over more than a decade, only the 2s and 5s between the powers of ten, so that labels do not crowd.
            few = np.log10(norm.vmax / norm.vmin) <= 1
            bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
            bar.ax.yaxis.set_minor_formatter(FuncFormatter(
                lambda v, _: f"{v:.2g}" if few or f"{v:.0e}"[0] in "25" else ""))  # fmt: skip
        ax.set_axis_off()
        ax.set_title(f"{slide_id} ({self.params['aggregator']} attention)")
        return ax

    def attention_heatmap(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Relative attention painted on the pixels of the slide's stored thumbnail.

        Parameters
        ----------
        slide_id
            A slide of the cohort.

        Returns
        -------
        ``(heat, thumbnail)``: ``(h, w)`` float attention relative to uniform (NaN off-tile) and the ``(h, w, 3)``
        uint8 thumbnail.

        Examples
        --------
        >>> heat, thumb = result.attention_heatmap("slide_01")  # doctest: +SKIP
        """
        from ._features import read_slide_features

        path, _ = self._slide(slide_id)
        sf = read_slide_features(path, key="embedding")
        table = self.attention_table(slide_id)
        heat = np.full(sf.thumbnail.shape[:2], np.nan, dtype=np.float32)
        half = 0.5 * sf.patch_um / sf.mpp / sf.thumbnail_downsample
        centres = sf.coords_px / sf.thumbnail_downsample
        h, w = heat.shape
        for (cx, cy), value in zip(centres, table["relative_attention"].to_numpy(), strict=True):
            x0, x1 = max(int(round(cx - half)), 0), min(int(round(cx + half)), w)
            y0, y1 = max(int(round(cy - half)), 0), min(int(round(cy + half)), h)
            heat[y0:y1, x0:x1] = value
        return heat, sf.thumbnail

    def _score_columns(self) -> list[tuple[str, str]]:
        cols = [("score", self.model_name)]
        if "baseline_score" in self.predictions.columns:
            cols.append(("baseline_score", str(self.metrics.index[1])))
        return cols


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    # Constrained: a colour bar's label and ticks stay inside the saved figure.
    _, ax = plt.subplots(figsize=(5, 4.5), layout="constrained")
    return ax
