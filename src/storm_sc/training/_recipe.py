"""Training runs described in YAML (``storm-sc pretrain --config FILE.yaml``): parsed and checked before any work."""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from storm_sc._settings import logger, messages_from_rank_zero, quiet_loggers
from storm_sc.models import StormConfig, StormModel, get_config
from storm_sc.models._checkpoint import SUFFIX, folder_hint

from ._config import TrainingConfig, check_hardware
from ._slides import TrainingSlide, check_val_groups, union_vocabulary

_TOP_LEVEL = (
    "model",
    "datasets",
    "vocabulary",
    "training",
    "split",
    "trainer",
    "output_dir",
    "patch_um",
    "patch_px",
    "seed",
)
_SECTIONS = ("training", "split", "trainer")
_DATASET_KEYS = (
    "loader",
    "args",
    "path",
    "name",
    "group",
    "table_key",
    "image_key",
    "mpp",
    "library_id",
    "layer",
    "gene_symbols",
    "use_image",
    "use_expression",
)
_SLIDE_OPTIONS = ("table_key", "image_key", "mpp", "library_id", "layer", "gene_symbols", "use_image", "use_expression")


@dataclass
class Recipe:
    """A validated training run: what to train, on what, how, and where the results go.

    Attributes
    ----------
    model
        Architecture to pretrain, or the model to continue training (loaded from ``model.checkpoint``).
    datasets
        One entry per slide: ``{"loader": name, "args": {...}}`` or ``{"path": ...}`` plus slide options.
    training
        Optimisation, split and hardware settings.
    output_dir
        Where ``model.safetensors`` and ``logs/metrics.csv`` are written.
    vocabulary
        Path of a gene vocabulary JSON (``GeneVocabulary.to_dict``); or ``{min_slides, max_genes}`` filters of
        the union of the datasets' genes (see :func:`union_vocabulary`); ``None`` for the whole union.
    checkpoint
        Checkpoint to continue training from, or ``None``.
    raw
        The parsed YAML after ``--set`` overrides (recorded in the manifest).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import storm_sc as st
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = pathlib.Path(tmp.name, "toy.yaml")
    >>> _ = path.write_text('''
    ... model: storm-tiny
    ... datasets:
    ...   - {loader: toy, args: {n_obs: 200, seed: 0}, name: toy_a, group: A}
    ...   - {loader: toy, args: {n_obs: 200, seed: 1}, name: toy_b, group: B}
    ... training: {max_epochs: 5, batch_size: 32}
    ... split: {val_groups: [B]}
    ... output_dir: runs/toy
    ... ''')
    >>> recipe = st.training.load_recipe(path, overrides=["training.max_epochs=1"])
    >>> recipe.model.name, recipe.training.max_epochs, recipe.training.val_groups
    ('storm-tiny', 1, ('B',))
    >>> [d["name"] for d in recipe.datasets], recipe.output_dir.as_posix()
    (['toy_a', 'toy_b'], 'runs/toy')
    >>> model = st.training.run_recipe(recipe)  # doctest: +SKIP
    >>> tmp.cleanup()
    """

    model: StormConfig
    datasets: list[dict[str, Any]]
    training: TrainingConfig
    output_dir: Path
    vocabulary: Path | dict[str, int] | None = None
    checkpoint: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def _set(raw: dict[str, Any], assignment: str) -> None:
    if "=" not in assignment:
        raise ValueError(f"`--set {assignment}`: expected KEY=VALUE with a dotted key, e.g. training.max_epochs=3.")
    key, value = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"`--set {assignment}`: {part!r} is not a section.")
    node[parts[-1]] = yaml.safe_load(value)


def _unknown(keys: Sequence[str], valid: Sequence[str], where: str) -> None:
    extra = sorted(set(keys) - set(valid))
    if extra:
        raise ValueError(f"Unknown key(s) {extra} in {where}; valid keys: {sorted(valid)}.")


def _yaml_floats(values: dict[str, Any], record: type) -> dict[str, Any]:
    """``values`` with numeric strings given to ``record``'s float fields read as numbers.

    PyYAML follows YAML 1.1, where a float needs a dot: ``lr: 1e-3`` is the string ``"1e-3"`` (``1.0e-3`` a float).
    """
    floats = {f.name for f in fields(record) if f.type == "float"}
    out = dict(values)
    for name, value in values.items():
        if name in floats and isinstance(value, str):
            try:
                out[name] = float(value)
            except ValueError:
                pass  # not a number: the config's own check names the field
    return out


def _pretrained_names() -> list[str]:
    from storm_sc.models._pretrained import list_pretrained

    return list_pretrained()


def _registered_checkpoint(name: str) -> Path | None:
    """The file of a registered pretrained model (the bundled reference, or downloaded once), for ``checkpoint``."""
    from storm_sc.models._pretrained import resolve_pretrained

    return resolve_pretrained(name) if name in _pretrained_names() else None


def _model_config(raw: dict[str, Any]) -> tuple[StormConfig, Path | None]:
    spec = raw.get("model", "storm-small")
    overrides: dict[str, Any] = {}
    checkpoint = None
    if isinstance(spec, str):
        name = spec
    elif isinstance(spec, dict):
        _unknown(list(spec), ["name", "overrides", "checkpoint"], "`model`")
        name = spec.get("name", "storm-small")
        overrides = _yaml_floats(dict(spec.get("overrides") or {}), StormConfig)
        checkpoint = Path(spec["checkpoint"]).expanduser() if spec.get("checkpoint") else None
    else:
        raise ValueError(
            "`model` must be a config name (e.g. storm-small) or a mapping with name/overrides/checkpoint."
        )
    if "patch_um" in raw:
        overrides["patch_um"] = float(raw["patch_um"])
    if "patch_px" in raw:
        overrides["image_size"] = int(raw["patch_px"])
    if checkpoint is not None and not checkpoint.is_file():
        checkpoint = _registered_checkpoint(str(spec["checkpoint"])) or checkpoint
    if checkpoint is not None:
        if checkpoint.is_dir():
            raise ValueError(
                f"`model.checkpoint`: {checkpoint} is a folder; a STORM checkpoint is a single {SUFFIX} file"
                f"{folder_hint(checkpoint)}."
            )
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"`model.checkpoint`: no file at {checkpoint}, and no pretrained model of that name (registered: "
                f"{_pretrained_names()})."
            )
        if overrides:
            raise ValueError("A checkpoint's architecture is fixed: drop `model.overrides` / patch_um / patch_px.")
        return StormConfig.from_dict(StormModel.inspect(checkpoint)["config"]), checkpoint
    return get_config(name, **overrides), None


def _check_dataset(i: int, entry: Any) -> dict[str, Any]:
    from storm_sc import datasets as loaders

    if not isinstance(entry, dict):
        raise ValueError(f"datasets[{i}] must be a mapping with `loader` (+ `args`) or `path`; got {entry!r}.")
    _unknown(list(entry), _DATASET_KEYS, f"datasets[{i}]")
    if ("loader" in entry) == ("path" in entry):
        raise ValueError(f"datasets[{i}] needs exactly one of `loader` (a storm_sc.datasets function) or `path`.")
    entry = dict(entry)
    if "loader" in entry:
        name = entry["loader"]
        func = getattr(loaders, str(name), None)
        if name not in getattr(loaders, "__all__", []) or not callable(func):
            raise ValueError(f"datasets[{i}]: unknown loader {name!r}; storm_sc.datasets has {loaders.__all__}.")
        args = entry.get("args") or {}
        if not isinstance(args, dict):
            raise ValueError(f"datasets[{i}].args must be a mapping of keyword arguments.")
        try:
            inspect.signature(func).bind(**args)
        except TypeError as err:
            raise ValueError(
                f"datasets[{i}]: arguments {args} do not fit {name}{inspect.signature(func)}: {err}"
            ) from err
        entry["args"] = args
        entry.setdefault(
            "name", name if not args else f"{name}(" + ", ".join(f"{k}={v}" for k, v in args.items()) + ")"
        )
    else:
        path = Path(entry["path"]).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"datasets[{i}].path: {path} does not exist.")
        if path.suffix not in (".zarr", ".h5ad"):
            raise ValueError(f"datasets[{i}].path: {path} must be a SpatialData .zarr folder or an AnnData .h5ad file.")
        entry["path"] = str(path.resolve())
        entry.setdefault("name", path.stem)
    return entry


def load_recipe(path: str | Path, *, overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> Recipe:
    """Read and validate a training recipe (YAML); nothing is loaded or trained.

    Parameters
    ----------
    path
        The YAML file. Top-level keys: ``model`` (a config name, or ``{name, overrides}``, or ``{checkpoint}``
        to continue training: a file, or a registered pretrained name such as the bundled reference's), ``datasets`` (list of ``{loader, args}`` or ``{path}`` with optional ``name``,
        ``group``, ``table_key``, ``image_key``, ``mpp``, ...), ``training`` / ``split`` / ``trainer`` (fields of
        :class:`TrainingConfig`), ``output_dir``, ``vocabulary`` (a JSON file, or ``{min_slides, max_genes}``
        filters of the datasets' union), ``patch_um`` / ``patch_px``, ``seed``. Relative paths are relative to the working directory.
    overrides
        ``"section.key=value"`` assignments applied before validation (values parsed as YAML).
    output_dir
        Replaces the recipe's ``output_dir`` (after ``overrides``); a path taken as given, never parsed as YAML.

    Returns
    -------
    The :class:`Recipe`.

    Examples
    --------
    >>> recipe = load_recipe("configs/storm-tiny-toy.yaml", overrides=["training.max_epochs=1"])  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No training config at {path}.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold a mapping of settings at the top level.")
    raw = copy.deepcopy(raw)
    for assignment in overrides:
        _set(raw, assignment)
    if output_dir is not None:
        raw["output_dir"] = str(output_dir)
    _unknown(list(raw), _TOP_LEVEL, str(path))

    config, checkpoint = _model_config(raw)
    entries = raw.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: `datasets` must be a non-empty list of {{loader, args}} or {{path}} entries.")
    datasets = [_check_dataset(i, e) for i, e in enumerate(entries)]

    valid = [f.name for f in fields(TrainingConfig)]
    options: dict[str, Any] = {}
    for section in _SECTIONS:
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise ValueError(f"`{section}` must be a mapping.")
        _unknown(list(values), valid, f"`{section}`")
        options.update(_yaml_floats(values, TrainingConfig))
    if "seed" in raw:
        options["seed"] = raw["seed"]
    training = TrainingConfig(**options)
    if training.val_groups is not None:  # checked now (and by --dry-run), not after every slide has been prepared
        check_val_groups([e["name"] if e.get("group") is None else e["group"] for e in datasets], training.val_groups)

    if "output_dir" not in raw:
        raise ValueError(f"{path}: set `output_dir`, the folder for the checkpoint and logs.")
    if not isinstance(raw["output_dir"], str) or not raw["output_dir"].strip():
        # YAML reads 2024, yes, 0.10 or 2024-01-01 as a number, boolean or date, not the folder name they spell
        raise ValueError(
            f"{path}: `output_dir` must be a folder path, got {raw['output_dir']!r} "
            f"({type(raw['output_dir']).__name__}); quote a name YAML would read as a number, boolean or date, "
            'e.g. output_dir: "2024".'
        )
    vocabulary = raw.get("vocabulary")
    if isinstance(vocabulary, dict):
        _unknown(list(vocabulary), ["min_slides", "max_genes"], "`vocabulary`")
    elif vocabulary is not None:
        vocabulary = Path(str(vocabulary)).expanduser()
        if not vocabulary.is_file():
            raise FileNotFoundError(f"`vocabulary`: no file at {vocabulary}.")
    if vocabulary is not None and checkpoint is not None:
        raise ValueError("A checkpoint brings its own gene vocabulary; drop `vocabulary`.")
    return Recipe(
        model=config,
        datasets=datasets,
        training=training,
        output_dir=Path(raw["output_dir"]).expanduser(),
        vocabulary=vocabulary,
        checkpoint=checkpoint,
        raw=raw,
    )


def _slide(entry: dict[str, Any]) -> TrainingSlide:
    from storm_sc import datasets as loaders

    options = {k: entry[k] for k in _SLIDE_OPTIONS if k in entry}
    if "loader" in entry:
        logger.info("Loading dataset %s.", entry["name"])
        data = getattr(loaders, entry["loader"])(**entry["args"])
        source = {"loader": entry["loader"], "args": entry["args"]}
    else:
        path = Path(entry["path"])
        if path.suffix == ".h5ad":
            import anndata

            data = anndata.read_h5ad(path)
        else:
            import spatialdata

            data = spatialdata.read_zarr(path)
        source = {"path": str(path)}
    return TrainingSlide(data=data, name=entry["name"], group=entry.get("group"), source=source, **options)


@messages_from_rank_zero
def run_recipe(
    recipe: Recipe, *, overwrite: bool = False, resume: bool | str = False, verbose: bool | None = None
) -> StormModel:
    """Load the datasets of a recipe and train; writes ``model.safetensors`` and ``logs/`` to ``output_dir``.

    Parameters
    ----------
    recipe
        From :func:`load_recipe`.
    overwrite
        Replace an existing ``model.safetensors``, logs or interrupted run in ``output_dir`` (not with ``resume``).
    resume
        Continue the run of this recipe that was interrupted; ``"auto"``: if there is one, else start it (see
        :func:`storm_sc.training.fit`).
    verbose
        Progress bars.

    Returns
    -------
    The trained model.

    Examples
    --------
    >>> model = run_recipe(load_recipe("configs/storm-tiny-toy.yaml"))  # doctest: +SKIP
    """
    from storm_sc.pp import GeneVocabulary

    from ._fit import MODEL_FILE, fit, pretrain
    from ._resume import checkpoint_to_resume

    # the output folder first: a finished or interrupted run there is found before any slide is read (quietly:
    # fit checks it again and says it is resuming, once)
    with quiet_loggers(logger.name):
        checkpoint_to_resume(recipe.output_dir, resume=resume, overwrite=overwrite, model_file=MODEL_FILE)
    # here rather than in load_recipe: --dry-run checks a GPU cluster's recipe on a machine without one
    check_hardware(recipe.training)
    slides = [_slide(e) for e in recipe.datasets]
    if recipe.checkpoint is not None:
        model = fit(
            StormModel.load(recipe.checkpoint),
            slides,
            config=recipe.training,
            output_dir=recipe.output_dir,
            overwrite=overwrite,
            resume=resume,
            provenance={"recipe": recipe.raw},
            verbose=verbose,
        )
    else:
        if isinstance(recipe.vocabulary, dict):
            vocabulary = union_vocabulary(slides, **recipe.vocabulary)
        elif recipe.vocabulary is not None:
            vocabulary = GeneVocabulary.from_dict(json.loads(recipe.vocabulary.read_text()))
        else:
            vocabulary = None
        model = pretrain(
            slides,
            model=recipe.model,
            vocabulary=vocabulary,
            config=recipe.training,
            output_dir=recipe.output_dir,
            overwrite=overwrite,
            resume=resume,
            provenance={"recipe": recipe.raw},
            verbose=verbose,
        )
    return model
