"""An interrupted training run continues from its run checkpoint (``resume=True``) to the uninterrupted result."""

import lightning as L
import pandas as pd
import pytest

import storm_sc as st
from storm_sc.models import StormModel
from storm_sc.training import pretrain

RUN = {"model": "storm-tiny", "max_epochs": 4, "batch_size": 32, "seed": 0, "verbose": False}


class _Crash(L.Callback):
    """Stops the run when the given epoch starts, as a pre-empted job would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise KeyboardInterrupt


def _interrupted(data, out, epoch=2, **options):
    with pytest.raises(KeyboardInterrupt):
        pretrain(data, output_dir=out, callbacks=[_Crash(epoch)], **{**RUN, **options})
    assert (out / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_run_ends_where_the_uninterrupted_one_does(small_toy, tmp_path, workers):
    whole = pretrain(small_toy, output_dir=tmp_path / "whole", **RUN)
    assert not (tmp_path / "whole" / "checkpoints").exists()  # spent once the model is written

    _interrupted(small_toy, tmp_path / "cut")
    # worker processes took their first items before Lightning set the resumed epoch: epoch 0's order
    resumed = pretrain(small_toy, output_dir=tmp_path / "cut", resume=True, **{**RUN, "num_workers": workers})
    # weights, optimiser, schedule, best epoch so far and the random generators (dropout, masking) all carried over
    assert resumed.weights_digest() == whole.weights_digest()
    run, run_whole = resumed.manifest["run"], whole.manifest["run"]
    assert run["history"] == run_whole["history"]
    assert (run["best_epoch"], run["epochs"], run["resumed_after_epochs"]) == (run_whole["best_epoch"], 4, 2)
    assert StormModel.load(tmp_path / "cut" / "model.safetensors").weights_digest() == whole.weights_digest()
    assert not (tmp_path / "cut" / "checkpoints").exists()
    # the interrupted part's logs are kept, the resumed part's beside them
    before = pd.read_csv(tmp_path / "cut" / "logs" / "metrics.csv")
    after = pd.read_csv(tmp_path / "cut" / "logs-from-epoch-2" / "metrics.csv")
    assert sorted(before["epoch"].dropna().unique()) == [0, 1]
    assert sorted(after["epoch"].dropna().unique()) == [2, 3]


def test_an_interrupted_run_is_neither_restarted_nor_resumed_by_accident(small_toy, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="Nothing to resume"):
        pretrain(small_toy, output_dir=out, resume=True, **RUN)
    with pytest.raises(ValueError, match="pass the run's output_dir"):
        pretrain(small_toy, resume=True, **RUN)
    _interrupted(small_toy, out, epoch=1)
    with pytest.raises(FileExistsError, match="interrupted run.*resume=True"):
        pretrain(small_toy, output_dir=out, **RUN)
    with pytest.raises(ValueError, match=r"lr \(0\.001 -> 0\.01\)"):
        pretrain(small_toy, output_dir=out, resume=True, **{**RUN, "lr": 1e-2})
    with pytest.raises(ValueError, match="architecture differs"):
        pretrain(small_toy, output_dir=out, resume=True, **{**RUN, "model": "storm-small"})
    other = st.datasets.toy(n_obs=200, n_genes=30, n_domains=3, seed=5)
    with pytest.raises(ValueError, match="other data"):
        pretrain(other, output_dir=out, resume=True, **RUN)
    # how long it runs may change
    longer = pretrain(small_toy, output_dir=out, resume=True, **{**RUN, "max_epochs": 2})
    assert longer.manifest["run"]["epochs"] == 2


def test_overwrite_starts_again_and_never_resumes_a_stale_checkpoint(small_toy, tmp_path):
    out = tmp_path / "run"
    _interrupted(small_toy, out, epoch=1)
    (out / "logs" / "metrics.csv").write_text("epoch\n0\n")
    # a new run that fails before its first epoch ends must leave nothing of the old one to resume
    with pytest.raises(KeyboardInterrupt):
        pretrain(small_toy, output_dir=out, overwrite=True, callbacks=[_Crash(0)], **RUN)
    assert not (out / "checkpoints").exists()
    with pytest.raises(FileNotFoundError, match="before its first epoch ended"):
        pretrain(small_toy, output_dir=out, resume=True, **RUN)


@pytest.mark.parametrize("resume", [True, "auto"])
def test_resume_and_overwrite_together_are_refused(small_toy, tmp_path, resume):
    out = tmp_path / "run"
    _interrupted(small_toy, out, epoch=1)
    with pytest.raises(ValueError, match=f"`resume={resume!r}` continues.*`overwrite=True` replaces it; pass one"):
        pretrain(small_toy, output_dir=out, resume=resume, overwrite=True, **RUN)
    assert (out / "checkpoints" / "last.ckpt").is_file()


def test_logs_of_another_run_are_not_replaced(small_toy, tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text("epoch\n0\n")
    with pytest.raises(FileExistsError, match="logs of another run"):
        pretrain(small_toy, output_dir=tmp_path, **RUN)


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(small_toy, tmp_path):
    model_file = tmp_path / "model.safetensors"
    model_file.write_bytes(b"a model")
    for out in (model_file, model_file / "run"):
        with pytest.raises(NotADirectoryError, match=f"{model_file} is a file. Pass a folder"):
            pretrain(small_toy, output_dir=out, **RUN)


def test_a_damaged_checkpoint_is_named(small_toy, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read as a storm_sc run checkpoint.*overwrite=True"):
        pretrain(small_toy, output_dir=tmp_path, resume=True, **RUN)


class _Preempted(L.Callback):
    """Saves a checkpoint mid-epoch as Lightning does on SLURM's signal (``hpc_ckpt_1.ckpt``), then stops."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 1 and batch_idx == 2:
            trainer.save_checkpoint(trainer.default_root_dir + "/hpc_ckpt_1.ckpt")
            raise KeyboardInterrupt


def test_a_requeued_slurm_job_resumes_from_the_pre_emption_checkpoint(small_toy, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pretrain(small_toy, output_dir=out, callbacks=[_Preempted()], **RUN)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["hpc_ckpt_1.ckpt", "last.ckpt"]
    with pytest.raises(FileExistsError, match="hpc_ckpt_1.ckpt"):  # the newer of the two
        pretrain(small_toy, output_dir=out, **RUN)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the same job script, run again by SLURM
    model = pretrain(small_toy, output_dir=out, **RUN)
    assert model.manifest["run"]["epochs"] == 4
    assert model.manifest["run"]["resumed_after_epochs"] == 1  # epoch 1 is finished after the restart
    assert [row["epoch"] for row in model.manifest["run"]["history"]] == [0, 1, 2, 3]
    assert (out / "logs-from-epoch-1" / "metrics.csv").is_file()
    assert not (out / "checkpoints").exists()


class _DiesInItsFirstEpoch(L.Callback):
    def on_validation_start(self, trainer, pl_module):
        raise KeyboardInterrupt  # after training steps were logged, before any checkpoint


def test_a_requeued_job_whose_run_died_in_its_first_epoch_starts_again(small_toy, tmp_path, monkeypatch):
    with pytest.raises(KeyboardInterrupt):
        pretrain(small_toy, output_dir=tmp_path, callbacks=[_DiesInItsFirstEpoch()], **RUN)
    assert (tmp_path / "logs" / "metrics.csv").is_file() and not (tmp_path / "checkpoints").exists()
    with pytest.raises(FileExistsError, match="logs of another run"):
        pretrain(small_toy, output_dir=tmp_path, **RUN)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    model = pretrain(small_toy, output_dir=tmp_path, **RUN)
    assert model.manifest["run"]["epochs"] == 4 and "resumed_after_epochs" not in model.manifest["run"]


def test_resume_auto_starts_a_run_or_resumes_one(small_toy, tmp_path):
    fresh = pretrain(small_toy, output_dir=tmp_path / "a", resume="auto", **RUN)
    assert "resumed_after_epochs" not in fresh.manifest["run"]
    _interrupted(small_toy, tmp_path / "b")
    resumed = pretrain(small_toy, output_dir=tmp_path / "b", resume="auto", **RUN)
    assert resumed.manifest["run"]["resumed_after_epochs"] == 2
    assert resumed.weights_digest() == fresh.weights_digest()
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        pretrain(small_toy, output_dir=tmp_path / "c", resume="yes", **RUN)


def test_a_step_limited_run_resumes_exactly(small_toy, tmp_path):
    # Lightning restarts a step-limited run at its last epoch's end: that epoch ended twice (a history row of
    # None), the next took the following epoch's order, and the restore drew from the generators
    steps = {**RUN, "max_epochs": 20, "max_steps": 20}
    whole = pretrain(small_toy, **steps)
    _interrupted(small_toy, tmp_path, **{"max_epochs": 20, "max_steps": 20})
    resumed = pretrain(small_toy, output_dir=tmp_path, resume=True, **steps)
    assert resumed.manifest["run"]["history"] == whole.manifest["run"]["history"]
    assert resumed.weights_digest() == whole.weights_digest()


class _CrashAtTheEnd(L.Callback):
    """Dies after the last epoch's checkpoint, before the model is written (e.g. while the readout is fitted)."""

    def on_train_end(self, trainer, pl_module):
        raise KeyboardInterrupt


def test_a_run_that_stopped_early_stays_stopped_unless_given_more_patience(small_toy, tmp_path):
    early = {**RUN, "max_epochs": 12, "early_stopping_patience": 1, "lr": 1e-2}
    whole = pretrain(small_toy, **early)
    assert whole.manifest["run"]["epochs"] < 12  # it did stop early
    with pytest.raises(KeyboardInterrupt):
        pretrain(small_toy, output_dir=tmp_path / "a", callbacks=[_CrashAtTheEnd()], **early)
    resumed = pretrain(small_toy, output_dir=tmp_path / "a", resume=True, **{**early, "expression_readout": False})
    assert resumed.manifest["run"]["epochs"] == whole.manifest["run"]["epochs"]
    assert resumed.manifest["run"]["history"] == whole.manifest["run"]["history"]

    with pytest.raises(KeyboardInterrupt):
        pretrain(small_toy, output_dir=tmp_path / "b", callbacks=[_CrashAtTheEnd()], **early)
    patient = pretrain(small_toy, output_dir=tmp_path / "b", resume=True, **{**early, "early_stopping_patience": 4})
    assert patient.manifest["run"]["epochs"] > whole.manifest["run"]["epochs"]
    assert patient.manifest["training"]["early_stopping_patience"] == 4
    with pytest.raises(KeyboardInterrupt):
        pretrain(small_toy, output_dir=tmp_path / "c", callbacks=[_CrashAtTheEnd()], **early)
    unstopped = pretrain(
        small_toy, output_dir=tmp_path / "c", resume=True, **{**early, "early_stopping_patience": None}
    )
    assert unstopped.manifest["run"]["epochs"] == 12  # early stopping turned off: the run goes to max_epochs


def test_sigterm_is_an_interruption_not_a_success(small_toy, tmp_path):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class _Term(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise SIGTERMException  # what Lightning raises once SIGTERM arrived (pre-emption, scancel)

    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        pretrain(small_toy, output_dir=tmp_path, callbacks=[_Term()], **RUN)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_a_checkpoint_write_that_dies_leaves_the_previous_one(tmp_path, monkeypatch):
    import torch

    from storm_sc.training._resume import AtomicCheckpointIO

    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, target)

    def dies_midway(obj, path):
        with open(path, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}


def test_resume_errors_say_what_differs(small_toy, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pretrain(small_toy, output_dir=tmp_path / "typo", resume=True, **RUN)
    _interrupted(small_toy, tmp_path / "run", epoch=1)
    fewer = st.datasets.toy(n_obs=150, n_genes=30, n_domains=3, seed=0)
    fewer.tables["table"].obs_names = small_toy["table"].obs_names[:150]
    with pytest.raises(ValueError, match=r"slide .*n_obs 200 -> 150"):
        pretrain(fewer, output_dir=tmp_path / "run", resume=True, **RUN)


def test_an_interrupted_fit_no_longer_calls_the_model_the_release(small_toy, storm_log):
    # fit trains in place: in a notebook, a model interrupted mid-fit stays in use and must not pass for the release
    # it was loaded as (its name is recorded with every result) nor keep a readout fitted to other weights
    model = StormModel("storm-tiny", small_toy["table"].var_names, seed=0)
    model.fit([small_toy], max_epochs=1, batch_size=32, seed=0, val_fraction=0.0, verbose=False)
    assert model.readout is not None
    model.pretrained_name = "storm-tiny-public-v5"  # as from_pretrained names a release
    with pytest.raises(KeyboardInterrupt), storm_log.at_level("WARNING", logger="storm_sc"):
        model.fit([small_toy], max_epochs=4, batch_size=32, seed=0, verbose=False, callbacks=[_Crash(2)])
    assert model.pretrained_name is None and model.readout is None
    assert model.manifest["interrupted_training"]["epochs_completed"] == 2
    assert "partly trained: it is no longer 'storm-tiny-public-v5' and its expression readout" in storm_log.text
    assert not model.network.training
    # interrupted before any step: the weights are the given ones and the model keeps its name
    model.pretrained_name = "storm-tiny-public-v5"
    with pytest.raises(KeyboardInterrupt):
        model.fit([small_toy], max_epochs=4, batch_size=32, seed=0, verbose=False, callbacks=[_Crash(0)])
    assert model.pretrained_name == "storm-tiny-public-v5"
