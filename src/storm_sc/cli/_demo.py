"""``storm-sc demo``: the main job, end to end, on an embedded default dataset."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

_DEFAULT_SECTION = "C2"


def add_parser(subparsers: Any) -> None:
    """Register ``storm-sc demo``."""
    parser = subparsers.add_parser(
        "demo",
        help="run the main job end to end on real her2st data when present, else on generated toy data",
        description=(
            "Run storm_sc end to end on a default dataset: the real HER2+ breast cancer ST section "
            f"her2st {_DEFAULT_SECTION} when it is in the data directory (STORM_SC_DATA_DIR or the cache), "
            "otherwise generated toy data. Prints which data it used and where it wrote its results."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("storm_sc_results") / "demo", help="output folder")
    parser.add_argument(
        "--data", choices=["auto", "her2st", "toy"], default="auto", help="which data to run on (default: auto)"
    )
    parser.add_argument(
        "--section",
        default=None,
        help=f"her2st section (default: {_DEFAULT_SECTION}); naming one runs on it or fails, never on toy data",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument(
        "--epochs", type=int, default=3, help="epochs for the slide-adapted model when no checkpoint is bundled"
    )


def _her2st_is_local(section: str) -> bool:
    from storm_sc.datasets import available

    table = available()
    key = f'her2st("{section}")'
    return key in table.index and bool(table.loc[key, "local"]) and bool(table.loc[key, "image"])


def _load(choice: str, section: str) -> tuple[Any, str, dict[str, Any] | None]:
    """The slide, its description and its source as a training manifest records it (None: generated)."""
    import storm_sc as st

    if choice == "her2st" or (choice == "auto" and _her2st_is_local(section)):
        source = {"loader": "her2st", "args": {"section": section, "image": True}}
        return st.datasets.her2st(section, image=True), f"her2st {section} (real HER2+ breast cancer ST)", source
    if choice == "auto":
        st._settings.logger.info(
            "her2st %s is not in the data directory %s; using generated toy data (set STORM_SC_DATA_DIR to a "
            "folder holding her2st to run on real data)",
            section,
            st.settings.data_dir,
        )
    return st.datasets.toy(seed=0), "toy (generated data with planted domains; not real data)", None


def _save_montage(patches: np.ndarray, path: Path) -> None:
    from PIL import Image

    n, _, size, _ = patches.shape
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = np.full((rows * size, cols * size, 3), 255, dtype=np.uint8)
    for i, patch in enumerate(patches):
        r, c = divmod(i, cols)
        canvas[r * size : (r + 1) * size, c * size : (c + 1) * size] = patch.transpose(1, 2, 0)
    Image.fromarray(canvas).save(path)


def _check(args: argparse.Namespace) -> str:
    """Refuse bad arguments before anything is read or written; returns the data choice."""
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise SystemExit(f"storm-sc demo: --out {out} is a file; name a folder.")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise SystemExit(f"storm-sc demo: {out} already holds results; pass --overwrite or choose another --out.")
    if args.epochs < 1:
        raise SystemExit(f"storm-sc demo: --epochs must be at least 1, got {args.epochs}.")
    if args.section is None:
        return args.data
    if args.data == "toy":
        raise SystemExit("storm-sc demo: --section names a her2st section; it does not apply to --data toy.")
    from storm_sc.datasets._her2st import her2st_image_path, her2st_local_image, her2st_sections

    sections = her2st_sections()
    if args.section not in sections:
        raise SystemExit(f"storm-sc demo: unknown her2st section {args.section!r}; choose one of {sections}.")
    if her2st_image_path(args.section) is None and her2st_local_image(args.section) is None:
        with_images = [s for s in sections if her2st_image_path(s) is not None or her2st_local_image(s) is not None]
        raise SystemExit(
            f"storm-sc demo: her2st {args.section} has no H&E image, registered or in the data directory, and the "
            f"demo predicts expression from H&E; choose a section with one: {with_images}."
        )
    return "her2st"  # a section named explicitly is run on, or the demo fails: never a silent switch to toy data


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    import storm_sc as st

    choice = _check(args)
    section = args.section or _DEFAULT_SECTION
    start = time.perf_counter()
    try:
        sdata, described, source = _load(choice, section)
    except (ValueError, KeyError, FileNotFoundError, OSError) as err:
        raise SystemExit(f"storm-sc demo: cannot read her2st {section}: {err}") from err
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"storm-sc demo: data = {described}")
    slide = st.io.resolve(sdata)
    print(f"storm-sc demo: {slide}")

    summary: dict[str, Any] = {
        "data": described,
        "platform": slide.platform,
        "n_obs": slide.n_obs,
        "n_genes": slide.table.n_vars,
        "mpp": slide.mpp,
        "storm_sc_version": st.__version__,
    }

    patches = st.pp.patch_dataset(slide, patch_um=112.0, patch_px=96)
    sample = np.linspace(0, slide.n_obs - 1, num=min(16, slide.n_obs)).astype(int)
    _save_montage(patches.read(sample), out / "patches.png")

    graph = st.pp.spatial_graph(slide, n_neighs=6)
    degrees = np.diff(graph.indptr)
    summary.update({"patch_um": 112.0, "graph_mean_degree": float(degrees.mean())})
    summary.update(_model_steps(sdata, slide, out, epochs=args.epochs, source=source))
    summary["seconds"] = round(time.perf_counter() - start, 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    written = sorted(p.name for p in out.iterdir())
    print(f"storm-sc demo: results written to {out.resolve()} ({', '.join(written)})")
    return 0


def _get_model(slide: Any, epochs: int) -> tuple[Any, str]:
    """The bundled reference checkpoint, or a storm-tiny adapted to this slide (and says so).

    The fallback serves builds without the reference and slides whose genes it does not know (generated toy data).
    """
    import storm_sc as st

    try:
        model = st.models.StormModel.from_pretrained()
    except (FileNotFoundError, ValueError, KeyError) as err:
        print(f"storm-sc demo: no bundled reference checkpoint ({err}); training storm-tiny on this slide instead")
    else:
        from storm_sc.models._pretrained import reference_name

        try:
            known = st.pp.align_genes(slide, model.vocabulary).n_matched
        except ValueError:  # no gene in common
            known = 0
        if known:
            name = reference_name()
            return model, f"reference checkpoint {name} (bundled; {known} of the slide's genes in its vocabulary)"
        print(
            f"storm-sc demo: the reference checkpoint knows none of this slide's {slide.table.n_vars} genes "
            "(generated names); training storm-tiny on this slide instead"
        )
    model = st.models.StormModel("storm-tiny", slide.table.var_names, seed=0)
    model.fit([slide], max_epochs=epochs, seed=0, verbose=False)
    return model, f"storm-tiny trained on this slide for {epochs} epochs (self-supervised, seed 0)"


def _model_steps(sdata: Any, slide: Any, out: Path, *, epochs: int, source: dict[str, Any] | None) -> dict[str, Any]:
    """Embed, find domains and predict expression from H&E; write figures and a per-gene table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import storm_sc as st

    model, described = _get_model(slide, epochs)
    print(f"storm-sc demo: model = {described}")
    try:
        genes_in_model = st.pp.align_genes(slide, model.vocabulary).n_matched
    except ValueError:  # no gene in common
        genes_in_model = 0
    st.tl.storm_embed(sdata, model, table_key=slide.table_key, verbose=False)
    n_domains = 5
    st.tl.storm_domains(sdata, n_domains=n_domains, table_key=slide.table_key)
    plt.close(st.pl.domains(sdata, table_key=slide.table_key, save=out / "domains.png", show=False))

    table = slide.table
    counts = np.asarray(table.X.sum(axis=0)).ravel()
    in_model = table.var_names.str.upper().isin([g.upper() for g in model.vocabulary.symbols])
    top = [table.var_names[i] for i in np.argsort(-counts) if in_model[i]][:50]
    predicted = st.tl.predict_expression(sdata, model, genes=top, table_key=slide.table_key, verbose=False)
    correlations = st.pl.gene_correlations(sdata, table_key=slide.table_key)
    correlations.to_csv(out / "gene_correlations.csv")
    top_three = list(correlations.index[:3])
    plt.close(st.pl.expression(sdata, top_three, table_key=slide.table_key, save=out / "expression.png", show=False))
    from storm_sc.models._manifest import training_slide_matching

    seen = training_slide_matching(model.manifest, slide.centers_um, source=source)
    if seen is not None:
        print(
            f"storm-sc demo: this slide is one of the model's training slides ({seen}): the correlations of predicted "
            "with measured expression are in-sample, not a held-out score (see docs/model_card.md for those)."
        )
    return {
        "model": described,
        "genes_in_model_vocabulary": int(genes_in_model),
        "slide_in_model_training": seen,
        "embedding_dim": int(table.obsm["X_storm"].shape[1]),
        "n_domains": n_domains,
        "domain_sizes": table.obs["storm_domain"].value_counts().sort_index().to_dict(),
        "predicted_genes": int(predicted.n_vars),
        "median_pearson_predicted_vs_measured": float(np.nanmedian(correlations["pearson_r"])),
    }
