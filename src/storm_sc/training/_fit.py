"""``fit`` (train a given model) and ``pretrain`` (build one and train it): the training engine's entry points."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader

from storm_sc._random import keeps_global_random_state
from storm_sc._settings import logger, messages_from_rank_zero, quiet_loggers, settings
from storm_sc.models import StormConfig, StormModel
from storm_sc.models._inference import native_bf16
from storm_sc.models._manifest import trained_from
from storm_sc.models._programs import corpus_loadings
from storm_sc.models._readout import readout_shortfall

from ._config import TrainingConfig, check_hardware
from ._dataset import ContextDataset, ContextSampler, collate
from ._module import BestWeights, History, SamplerEpoch, StormLightningModule, Throughput
from ._resume import (
    LAST,
    LOG_DIR,
    AtomicCheckpointIO,
    RandomStates,
    ResumableEarlyStopping,
    RunDescription,
    check_same_data,
    check_same_run,
    checkpoint_folder,
    checkpoint_to_resume,
    clear_checkpoints,
    clear_resumed_logs,
    describe_run,
    read_description,
)
from ._slides import (
    TRAIN,
    VAL,
    PreparedSlide,
    as_slides,
    check_val_groups,
    prepare_slides,
    slide_manifest,
    split,
    union_vocabulary,
)

if TYPE_CHECKING:
    import lightning as L

    from storm_sc.models._readout import ExpressionReadout
    from storm_sc.pp import GeneVocabulary

MODEL_FILE = "model.safetensors"


def _options(config: TrainingConfig | None, overrides: dict[str, Any]) -> TrainingConfig:
    base = config if config is not None else TrainingConfig()
    if not isinstance(base, TrainingConfig):
        raise TypeError(f"`config` must be a TrainingConfig, got {type(base).__name__}.")
    return base.replace(**overrides) if overrides else base


def _launch_settings(options: TrainingConfig) -> dict[str, Any]:
    """Trainer hardware settings; ``devices="auto"``: the processes of a torchrun / SLURM launch, else one device."""
    devices: int | str = options.devices
    num_nodes = options.num_nodes
    strategy = options.strategy
    env = os.environ
    if devices == "auto" and "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env:  # torchrun / torchelastic
        devices = int(env["LOCAL_WORLD_SIZE"])
        num_nodes = max(1, int(env["WORLD_SIZE"]) // devices)
    elif (
        devices == "auto"
        and "SLURM_NTASKS_PER_NODE" in env
        and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    ):
        devices = int(env["SLURM_NTASKS_PER_NODE"].split("(")[0])
        num_nodes = int(env.get("SLURM_NNODES", num_nodes))
    elif devices == "auto":
        # Lightning's "auto" takes every GPU of the machine and forks (in a notebook) or re-runs the user's script
        # per GPU: not what a plain call expects, and a forked run returns neither the best epoch's weights nor
        # the history to the caller. Several GPUs are asked for (devices=N) or launched (torchrun / SLURM).
        devices = 1
    multi = (isinstance(devices, int) and devices > 1) or num_nodes > 1
    if strategy == "auto" and multi:
        strategy = "ddp"
    accelerator = options.accelerator
    precision = options.precision or (
        "bf16-mixed" if _uses_gpu(options) and native_bf16(torch.device("cuda")) else "32-true"
    )
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "precision": precision,
    }


def _uses_gpu(options: TrainingConfig) -> bool:
    return options.accelerator in ("gpu", "cuda") or (options.accelerator == "auto" and torch.cuda.is_available())


def _world_size(launch: dict[str, Any]) -> int:
    devices = launch["devices"]
    per_node = devices if isinstance(devices, int) else 1
    return per_node * launch["num_nodes"]


@contextlib.contextmanager
def _lightning_messages(show: bool) -> Iterator[None]:
    """Hide Lightning's informational messages (not its warnings) unless progress is shown."""
    if show:
        yield
        return
    with quiet_loggers("lightning.pytorch", "lightning.fabric"):
        yield


@messages_from_rank_zero
@keeps_global_random_state
def fit(
    model: StormModel,
    data: Any,
    *,
    config: TrainingConfig | None = None,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    resume: bool | Literal["auto"] = False,
    callbacks: Sequence[L.Callback] = (),
    cache_dir: str | Path | None = None,
    init_gene_statistics: bool | None = None,
    provenance: dict[str, Any] | None = None,
    verbose: bool | None = None,
    **options: Any,
) -> StormModel:
    """Train a STORM model in place on spatial slides (CPU, one GPU with bf16, or many with DDP).

    Each training sample is a centre observation with its niche and region neighbours. Four objectives are
    optimised: contrastive alignment of morphology and expression (per observation, and between the H&E-only and
    expression-only contextual embeddings), reconstruction of masked gene tokens from the joint view, and
    prediction of measured expression from H&E and positions only; modality dropout teaches the model to embed
    observations with either modality missing. Validation holds out whole slide groups (patients),
    and training stops early when the validation loss stops improving; the best weights are kept. Python's, NumPy's
    and torch's global generators are seeded for the run (``seed``) and given back as they were afterwards.
    A run stopped partway (Ctrl+C, an error) leaves ``model`` partly trained: it then no longer carries the name of
    the release it was loaded as, nor its expression readout, and ``model.manifest["interrupted_training"]`` says
    so (with ``output_dir``, ``resume=True`` continues the run instead).

    Parameters
    ----------
    model
        The model to train (its vocabulary and architecture are kept).
    data
        Slides: SpatialData / AnnData / SpatialInput / :class:`TrainingSlide`, a list of them, or a dict of
        name to them. Give :class:`TrainingSlide` objects a ``group`` (patient) to split by patient. A SpatialData
        holding several slides (``spatialdata.concatenate``) gives one training slide each: named ``"<name>/<slide>"``
        and grouped by ``<name>`` when the object is named (a dict key, a ``TrainingSlide`` name), else by their own.
    config
        Training settings; ``**options`` override single fields.
    output_dir
        Folder for the trained model (``model.safetensors``) and the CSV logs (``logs/metrics.csv``). While the run
        lasts, it also holds a checkpoint of the run (``checkpoints/last.ckpt``, rewritten at every epoch's end and
        removed once the model is written) from which ``resume=True`` continues a run that was interrupted.
        ``None``: nothing is written (epoch losses stay in ``model.manifest["run"]["history"]``) and an
        interrupted run is lost.
    overwrite
        Replace an existing ``model.safetensors``, logs or interrupted run in ``output_dir`` (not with ``resume``).
    resume
        Continue the interrupted run saved in ``output_dir`` from its last checkpoint, with the same model, slides
        and settings. The weights, optimiser, schedule, early stopping, best epoch so far and random generators
        are restored: on one process, a run resumed from an epoch's end ends as the uninterrupted run would have
        (on the same hardware and number of CPU threads, which change the rounding).
        Only where and how long it runs may change (``max_epochs``, ``max_steps``, ``early_stopping_patience``,
        ``devices``, ``num_workers``, ...); a new run length or process count recomputes the learning-rate schedule
        from there on (warned). ``"auto"``: resume if there is an interrupted run, else start one (for job scripts
        that may run more than once). A requeued SLURM job resumes by itself, also from the checkpoint Lightning
        writes when SLURM signals the job's end (``#SBATCH --signal=SIGUSR1@90``); that one is taken mid-epoch,
        and the rest of that epoch takes its batches from the start of the epoch's order again. The logs of the
        resumed part go to ``logs-from-epoch-<N>/``. An interrupted run (Ctrl+C, SIGTERM) raises
        ``KeyboardInterrupt``.
    callbacks
        Extra Lightning callbacks.
    cache_dir
        Folder for memory-mapped patch caches of large slides (default: the system temporary folder).
    provenance
        Extra description of the run stored in the manifest (e.g. the YAML recipe).
    init_gene_statistics
        Start the expression decoders at each gene's mean and variance in the training observations. ``None``:
        only for a model that was never trained (its ``manifest`` is empty); a trained model keeps its decoders.
    verbose
        Progress bars.
    **options
        Fields of :class:`TrainingConfig` (``max_epochs=``, ``batch_size=``, ``lr=``, ``seed=``, ``devices=``, ...).

    Returns
    -------
    The trained model (on the CPU), its ``manifest`` describing the data, split and run.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=300, n_genes=60, n_domains=3, seed=0)  # doctest: +SKIP
    >>> model = st.models.StormModel("storm-tiny", sdata["table"].var_names)  # doctest: +SKIP
    >>> st.training.fit(model, sdata, max_epochs=2, seed=0)  # doctest: +SKIP
    StormModel(storm-tiny, 60 genes, ...)
    """
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    if not isinstance(model, StormModel):
        raise TypeError(f"`model` must be a StormModel, got {type(model).__name__}.")
    opts = _options(config, options)
    check_hardware(opts)
    slides = as_slides(data)
    if opts.val_groups is not None:  # now, not after every slide has been read and cut into patches
        check_val_groups([s.group for s in slides], opts.val_groups)
    out_dir = Path(output_dir).expanduser() if output_dir is not None else None
    resume_from = checkpoint_to_resume(out_dir, resume=resume, overwrite=overwrite, model_file=MODEL_FILE)
    resumed_epochs = 0
    if resume_from is not None:
        description, resumed_epochs = read_description(resume_from)
        check_same_run(description, model, opts, resume_from)
        logger.info(
            "Resuming the run in %s from %s, after %d completed epoch(s)%s.",
            out_dir,
            resume_from.name,
            resumed_epochs,
            ""
            if resume_from.name == LAST
            else f" (mid-epoch: the rest of epoch {resumed_epochs} takes its batches from the start of the epoch's "
            "order again, so that epoch sees some observations twice and others not)",
        )
    launch = _launch_settings(opts)

    L.seed_everything(opts.seed, workers=True, verbose=False)
    prepared = prepare_slides(model, slides, cache_dir=cache_dir, num_workers=opts.num_workers, verbose=verbose)
    split_info = split(prepared, val_groups=opts.val_groups, val_fraction=opts.val_fraction, seed=opts.seed)
    datasets = [slide_manifest(p) for p in prepared]
    parent = trained_from(model)  # before training changes the weights
    if resume_from is not None:
        check_same_data(description, datasets, resume_from)
    train_set = ContextDataset(prepared, TRAIN, model.config, opts, train=True)
    val_set = ContextDataset(prepared, VAL, model.config, opts, train=False)
    if len(train_set) == 0:
        raise ValueError("No training observations are left after the validation split; lower `val_fraction`.")
    if init_gene_statistics or (init_gene_statistics is None and not model.manifest):
        _init_gene_statistics(model, prepared)
        _init_program_loadings(model, prepared, seed=opts.seed)

    # Batches per epoch and process, assuming one process (the log interval only; the learning-rate schedule
    # asks the trainer, which knows the process layout).
    steps_per_epoch = max(1, math.ceil(len(train_set) / opts.batch_size))

    loader_args = {
        "batch_size": opts.batch_size,
        "collate_fn": collate,
        "num_workers": opts.num_workers,
        "persistent_workers": False,
        "pin_memory": torch.cuda.is_available(),
    }
    if opts.num_workers:
        loader_args["prefetch_factor"] = 4
    # Our samplers shard across processes themselves and carry the epoch into the items (see ContextSampler).
    train_sampler = ContextSampler(len(train_set), shuffle=True, seed=opts.seed)
    # Lightning sets the epoch before each epoch's iterator, except that a restarted run's worker processes may take
    # their first items before it does: they would train the resumed epoch on epoch 0's order.
    train_sampler.set_epoch(resumed_epochs)
    train_loader = DataLoader(train_set, sampler=train_sampler, **loader_args)
    val_loader = None
    if len(val_set):
        val_loader = DataLoader(val_set, sampler=ContextSampler(len(val_set), shuffle=False, seed=0), **loader_args)

    best, history, throughput = BestWeights(opts.monitor), History(), Throughput()
    cbs: list[L.Callback] = [best, history, throughput, SamplerEpoch(train_sampler), *callbacks]
    if out_dir is not None:
        from lightning.pytorch.callbacks import ModelCheckpoint

        if resume_from is None:
            # by every process, before its trainer exists: on SLURM, Lightning would resume a stale one by itself
            clear_checkpoints(out_dir)
            if overwrite:
                clear_resumed_logs(out_dir)
        # At the training epoch's end, after the callbacks above have recorded it: the resumed run starts the next
        # epoch with everything the uninterrupted run had at that point.
        cbs += [
            RandomStates(),
            RunDescription(describe_run(model, opts, datasets)),
            ModelCheckpoint(
                dirpath=checkpoint_folder(out_dir),
                filename="last",
                save_top_k=1,
                monitor=None,
                save_on_train_epoch_end=True,
                enable_version_counter=False,
            ),
        ]
    if val_loader is not None and opts.early_stopping_patience is not None:
        # not strict: a run cut short by max_steps before its first validation simply has nothing to compare
        cbs.append(
            ResumableEarlyStopping(
                monitor=opts.monitor,
                patience=opts.early_stopping_patience,
                mode="min",
                strict=False,
                check_on_train_epoch_end=False,
            )
        )
    # a resumed run's logs go beside the interrupted run's: the CSV logger empties the folder it writes to
    log_version = LOG_DIR if resume_from is None else f"{LOG_DIR}-from-epoch-{resumed_epochs}"
    csv = CSVLogger(save_dir=out_dir, name="", version=log_version) if out_dir is not None else None
    show = settings.show_progress(verbose)
    module = StormLightningModule(model.network, opts)
    model.network.train()
    # Lightning announces devices and advertises services at INFO level; a quiet run should be quiet.
    with _lightning_messages(show):
        trainer = L.Trainer(
            **launch,
            max_epochs=opts.max_epochs,
            max_steps=opts.max_steps,
            gradient_clip_val=opts.gradient_clip or None,
            log_every_n_steps=min(opts.log_every_n_steps, steps_per_epoch),
            logger=csv if csv is not None else False,
            callbacks=cbs,
            # where Lightning writes its checkpoint when SLURM signals a job's end (and looks for one on restart)
            default_root_dir=checkpoint_folder(out_dir) if out_dir is not None else None,
            enable_checkpointing=out_dir is not None,  # our ModelCheckpoint only (the run checkpoint)
            plugins=[AtomicCheckpointIO()] if out_dir is not None else None,
            enable_progress_bar=show,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            # the projection heads' batch statistics then cover the global batch, as the gathered contrastive loss does
            # (torch synchronises batch norm on GPUs only)
            sync_batchnorm=_world_size(launch) > 1 and _uses_gpu(opts),
        )
        logger.info(
            "Training %r on %d slides: %d training / %d validation centres (%s split), %d steps per epoch, %s.",
            model,
            len(prepared),
            len(train_set),
            len(val_set),
            split_info["strategy"],
            steps_per_epoch,
            ", ".join(f"{k}={v}" for k, v in launch.items()),
        )
        with warnings.catch_warnings():
            # Small data sets trigger Lightning's "few batches / workers" hints; the settings are deliberate.
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")  # val_fraction=0 is deliberate too
            # the folders were checked above: resume=True reuses the checkpoint folder, overwrite=True replaces the logs
            warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
            warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
            # a mid-epoch (SLURM) checkpoint: said in our words when the run resumes
            warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch.*")
            # a run folder moved or renamed between the interruption and the resume: the checkpoint path is ours
            warnings.filterwarnings("ignore", message=".*The dirpath has changed from.*")
            if resume_from is not None and opts.early_stopping_patience is None:
                # early stopping dropped on resume: its saved state has no callback to go to, as asked
                warnings.filterwarnings("ignore", message=".*Please add the following callbacks.*EarlyStopping.*")
            # Lightning's own use of an API torch deprecated: nothing a user of storm_sc can act on
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
            try:
                _fit_interruptible(trainer, module, train_loader, val_loader, ckpt_path=resume_from)
            except BaseException:
                if trainer.global_step > 0:  # an optimiser step was taken: the weights are no longer the given ones
                    _mark_partly_trained(model, datasets, epochs=trainer.current_epoch)
                raise

    best.restore(model.network)
    model.network.cpu().eval()
    readout = _fit_readout(model, prepared, opts, verbose, device=trainer.strategy.root_device)
    model.manifest = {
        **({"provenance": provenance} if provenance else {}),
        **({"parent": parent} if parent else {}),
        "datasets": datasets,
        "split": split_info,
        "training": opts.to_dict(),
        "run": {
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            **({"resumed_after_epochs": resumed_epochs} if resume_from is not None else {}),
            "best_epoch": best.best_epoch,
            "best_val_loss": None if best.best_epoch is None else round(best.best, 6),
            "history": history.epochs,
        },
        **({"readout": readout.describe()} if readout is not None else {}),
    }
    log_dir = None if csv is None else str(csv.log_dir)
    model.training_summary = {"patches_per_second": throughput.patches_per_second, "log_dir": log_dir}
    model.pretrained_name = None  # its weights are no longer the release's
    logger.info(
        "Training done: %d epochs, %.1f patches/s per process%s.",
        trainer.current_epoch,
        throughput.patches_per_second,
        f"; logs in {log_dir}" if log_dir else "",
    )
    if out_dir is not None and trainer.is_global_zero:
        # a resumed run replaces nothing: the interrupted run never wrote its model
        model.save(out_dir / MODEL_FILE, overwrite=overwrite, dtype=opts.checkpoint_dtype)
        clear_checkpoints(out_dir)
    return model


def _mark_partly_trained(model: StormModel, datasets: list[dict[str, Any]], *, epochs: int) -> None:
    """Say on ``model`` that a failed or interrupted ``fit`` changed its weights in place (as fit trains).

    In a notebook the interrupted model stays in use: without this it still called itself the release it was
    loaded as (its name recorded with every result), with the readout fitted to the weights it no longer has.
    """
    model.network.cpu().eval()
    dropped = [
        *([f"it is no longer {model.pretrained_name!r}"] if model.pretrained_name is not None else []),
        *(["its expression readout (fitted to the former weights) was dropped"] if model.readout is not None else []),
    ]
    model.manifest = {**model.manifest, "interrupted_training": {"datasets": datasets, "epochs_completed": epochs}}
    model.pretrained_name = None
    model.readout = None
    if dropped:
        logger.warning(
            "Training stopped after %d complete epoch(s) and the model's weights are partly trained: %s. Load the "
            "model again to start over, or resume the run from its output_dir.",
            epochs,
            " and ".join(dropped),
        )


def _fit_readout(
    model: StormModel,
    prepared: Sequence[PreparedSlide],
    opts: TrainingConfig,
    verbose: bool | None,
    *,
    device: torch.device,
) -> ExpressionReadout | None:
    """Fit the expression readout on the slides with both modalities (all their observations), if asked.

    ``device``: the process's training device (its own GPU under DDP), which embeds the training slides for the fit.
    """
    both = {p.name: p.inputs for p in prepared if p.inputs.has_image and p.inputs.expression is not None}
    shortfall = readout_shortfall([i.centers_um[:, 0] for i in both.values()]) if both else None
    if not opts.expression_readout or not both or shortfall is not None:
        if model.readout is not None:
            # it reads features the new weights no longer make: kept, it would predict from the wrong features
            logger.warning(
                "The model's expression readout (%d genes) is dropped: the weights changed and it was not refitted "
                "(%s). predict_expression uses the network head until model.fit_expression_readout(...) is run.",
                model.readout.n_genes,
                "expression_readout=False"
                if not opts.expression_readout
                else shortfall or "no training slide has H&E and expression",
            )
            model.readout = None
        elif opts.expression_readout and shortfall is not None:
            # fitted anyway, its cross-validated uncertainties would all be NaN
            logger.warning(
                "The expression readout was not fitted on the training slides: %s (model.fit_expression_readout). "
                "predict_expression uses the network head meanwhile.",
                shortfall,
            )
        return None
    before = model.readout
    # Every process fits the same readout from the same weights, so the returned models stay identical.
    model.fit_expression_readout(both, device=device, verbose=verbose)
    after = model.readout
    if before is not None and after is not None:
        lost = len(set(before.gene_ids) - set(after.gene_ids))
        if lost:
            # the old readout reads features the new weights no longer make, so it cannot be kept; say what it cost
            logger.warning(
                "The expression readout was refitted on the %d training slide(s): it covers %d genes, the model's "
                "previous readout (%d slides) covered %d, %d of them no longer. predict_expression predicts those "
                "with the network head; keep the original model for them, or fine-tune on more slides.",
                len(after.slides),
                after.n_genes,
                len(before.slides),
                before.n_genes,
                lost,
            )
    return after


def _fit_interruptible(
    trainer: L.Trainer,
    module: L.LightningModule,
    train_loader: Any,
    val_loader: Any,
    *,
    ckpt_path: Path | None = None,
) -> None:
    """``trainer.fit``, where Ctrl+C (or SIGTERM) is a KeyboardInterrupt and leaves Ctrl+C working afterwards.

    Lightning answers a KeyboardInterrupt by ignoring SIGINT for the rest of the process and calling
    ``sys.exit(1)``: in a notebook the kernel would then ignore every later Ctrl+C, and callers (``storm_embed``
    with ``adapt_epochs``) would see a SystemExit instead of the interruption.
    """
    from lightning.pytorch.trainer.states import TrainerStatus
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    in_main = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if in_main else None
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    except SIGTERMException as err:
        # A pre-empted or cancelled job: Lightning exits with status 0 on SIGTERM, which job chains take for success.
        raise KeyboardInterrupt("SIGTERM") from err
    except SystemExit as err:
        interruption = err.__context__  # what Lightning caught before exiting
        if trainer.state.status == TrainerStatus.INTERRUPTED and isinstance(interruption, KeyboardInterrupt):
            raise interruption from None
        raise
    finally:
        if in_main and sigint is not None:
            signal.signal(signal.SIGINT, sigint)


@messages_from_rank_zero
def pretrain(
    data: Any,
    *,
    model: str | StormConfig | StormModel = "storm-small",
    vocabulary: GeneVocabulary | Sequence[str] | None = None,
    config: TrainingConfig | None = None,
    output_dir: str | Path | None = None,
    overwrite: bool = False,
    resume: bool | Literal["auto"] = False,
    callbacks: Sequence[L.Callback] = (),
    cache_dir: str | Path | None = None,
    provenance: dict[str, Any] | None = None,
    verbose: bool | None = None,
    **options: Any,
) -> StormModel:
    """Pretrain a STORM model from scratch on spatial slides; :func:`storm_sc.training.fit` does the training itself.

    Parameters
    ----------
    data
        Slides (see :func:`storm_sc.training.fit`).
    model
        Architecture name (``"storm-tiny"``, ``"storm-small"``, ``"storm-base"``), a
        :class:`storm_sc.models.StormConfig`, or a :class:`storm_sc.models.StormModel` to continue training.
    vocabulary
        Genes of the model; default the union of the slides' genes.
    config, output_dir, overwrite, resume, callbacks, cache_dir, provenance, verbose, **options
        As in :func:`storm_sc.training.fit`.

    Returns
    -------
    The trained model.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=300, n_genes=60, n_domains=3, seed=0)  # doctest: +SKIP
    >>> model = st.training.pretrain(sdata, model="storm-tiny", max_epochs=2, output_dir="runs/toy")  # doctest: +SKIP
    """
    opts = _options(config, options)
    check_hardware(opts)
    if isinstance(model, StormModel):
        if vocabulary is not None:
            raise ValueError("`vocabulary` cannot change an existing model's genes; drop it.")
        net = model
    else:
        slides = as_slides(data)
        vocab = vocabulary if vocabulary is not None else union_vocabulary(slides)
        net = StormModel(model, vocab, seed=opts.seed)
        data = slides
    return fit(
        net,
        data,
        config=opts,
        output_dir=output_dir,
        overwrite=overwrite,
        resume=resume,
        callbacks=callbacks,
        cache_dir=cache_dir,
        provenance=provenance,
        verbose=verbose,
    )


@torch.no_grad()
def _init_gene_statistics(model: StormModel, prepared: Sequence[PreparedSlide]) -> None:
    """Set the decoders' per-gene biases to the genes' mean and log-variance over the training observations.

    A fresh decoder otherwise spends its first hundreds of steps learning per-gene averages; starting from them
    lets the objectives shape the embedding from the first epoch.
    """
    n = len(model.vocabulary)
    total, total_sq, count = np.zeros(n), np.zeros(n), np.zeros(n)
    for p in prepared:
        if p.inputs.expression is None:
            continue
        x = p.inputs.expression[p.rows(TRAIN)]
        gi = p.inputs.gene_index
        total[gi] += np.asarray(x.sum(axis=0)).ravel()
        total_sq[gi] += np.asarray(x.multiply(x).sum(axis=0)).ravel()
        count[gi] += x.shape[0]
    seen = count > 0
    if not seen.any():
        return
    mean = np.clip(total[seen] / count[seen], 1e-3, None)
    var = np.clip(total_sq[seen] / count[seen] - (total[seen] / count[seen]) ** 2, 1e-2, None)
    for head in (model.network.reconstruction_head, model.network.prediction_head):
        dev = head.mean_bias.device
        idx = torch.as_tensor(np.flatnonzero(seen), device=dev)
        raw_mean = torch.as_tensor(mean + np.log(-np.expm1(-mean)), dtype=torch.float32, device=dev)  # softplus inverse
        half = 0.5 * (head.logvar_max - head.logvar_min)
        mid = 0.5 * (head.logvar_max + head.logvar_min)
        scaled = np.clip((np.log(var) - mid) / half, -0.99, 0.99)
        raw_lv = torch.as_tensor(half * np.arctanh(scaled), dtype=torch.float32, device=dev)
        head.mean_bias[idx] = raw_mean
        head.logvar_bias[idx] = raw_lv


@torch.no_grad()
def _init_program_loadings(model: StormModel, prepared: Sequence[PreparedSlide], *, seed: int) -> None:
    """Set the program path's fixed gene loadings to the training corpus's main axes of co-expression."""
    encoder = model.network.expression
    if encoder.program_proj is None:
        return
    slides = [
        (p.inputs.expression[p.rows(TRAIN)], p.inputs.gene_index) for p in prepared if p.inputs.expression is not None
    ]
    config = model.config
    loadings = corpus_loadings(slides, len(model.vocabulary), config.program_genes, config.program_dim, seed=seed)
    if np.abs(loadings).sum() > 0:  # a corpus without expression keeps the random map
        encoder.program_loadings.copy_(torch.as_tensor(loadings))
