import json

import pytest
import torch
import yaml

import storm_sc as st
from storm_sc.cli import main
from storm_sc.models import StormModel
from storm_sc.models._inference import native_bf16
from storm_sc.training import TrainingConfig, load_recipe
from storm_sc.training._fit import _launch_settings

TOY = {"loader": "toy", "args": {"n_obs": 120, "n_genes": 24, "n_domains": 3, "seed": 0}}


def _write(tmp_path, **recipe):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_recipe_is_parsed_with_sections_and_overrides(tmp_path):
    path = _write(
        tmp_path,
        model={"name": "storm-tiny", "overrides": {"region_k": 4}},
        patch_px=24,
        datasets=[dict(TOY, group="P1"), dict(TOY, args=dict(TOY["args"], seed=1), name="second")],
        training={"max_epochs": 3},
        split={"val_groups": ["second"]},
        trainer={"devices": 1},
        output_dir=str(tmp_path / "out"),
        seed=7,
    )
    recipe = load_recipe(path, overrides=["training.batch_size=8", "trainer.accelerator=cpu"])
    assert recipe.model.region_k == 4
    assert recipe.model.image_size == 24
    assert recipe.training == TrainingConfig(
        max_epochs=3, batch_size=8, val_groups=("second",), devices=1, accelerator="cpu", seed=7
    )
    assert [d["name"] for d in recipe.datasets] == ["toy(n_obs=120, n_genes=24, n_domains=3, seed=0)", "second"]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"datasets": [TOY], "output_dir": "x", "epochs": 3}, "Unknown key"),
        ({"datasets": [TOY], "output_dir": "x", "training": {"epochs": 3}}, "Unknown key"),
        ({"datasets": [], "output_dir": "x"}, "non-empty list"),
        ({"datasets": [{"loader": "nope"}], "output_dir": "x"}, "unknown loader"),
        ({"datasets": [{"loader": "toy", "args": {"n_cells": 3}}], "output_dir": "x"}, "do not fit"),
        ({"datasets": [{"loader": "toy", "path": "a.zarr"}], "output_dir": "x"}, "exactly one of"),
        ({"datasets": [TOY]}, "output_dir"),
        ({"datasets": [TOY], "output_dir": "x", "model": "storm-huge"}, "registered"),
        ({"datasets": [TOY], "output_dir": "x", "training": {"lr": -1}}, "lr"),
        # validation groups are checked when the recipe is read (and by --dry-run), not after the slides are prepared
        ({"datasets": [{**TOY, "group": "C"}], "output_dir": "x", "split": {"val_groups": ["c"]}}, "case-sensitive"),
        ({"datasets": [{**TOY, "group": "C"}], "output_dir": "x", "split": {"val_groups": ["C"]}}, "every group"),
    ],
)
def test_bad_recipes_are_refused_before_any_work(tmp_path, recipe, message):
    with pytest.raises(ValueError, match=message):
        load_recipe(_write(tmp_path, **recipe))


def test_vocabulary_filters_in_a_recipe(tmp_path):
    recipe = load_recipe(_write(tmp_path, datasets=[TOY], output_dir="x", vocabulary={"max_genes": 10}))
    assert recipe.vocabulary == {"max_genes": 10}
    with pytest.raises(ValueError, match="Unknown key"):
        load_recipe(_write(tmp_path, datasets=[TOY], output_dir="x", vocabulary={"top": 10}))


def test_missing_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "none.yaml")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_recipe(_write(tmp_path, datasets=[{"path": str(tmp_path / "gone.zarr")}], output_dir="x"))


def test_a_recipe_continues_training_a_registered_pretrained_model(tmp_path):
    name = st.models.list_pretrained()[0]
    recipe = load_recipe(_write(tmp_path, model={"checkpoint": name}, datasets=[TOY], output_dir=str(tmp_path / "o")))
    assert recipe.checkpoint.is_file() and recipe.model == StormModel.from_pretrained(name).config
    with pytest.raises(FileNotFoundError, match=f"no pretrained model of that name.*{name}"):
        load_recipe(_write(tmp_path, model={"checkpoint": "no-such-model"}, datasets=[TOY], output_dir="x"))


def test_a_recipe_checkpoint_given_a_training_output_folder_names_its_model_file(tmp_path):
    run = tmp_path / "run1"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"a trained model")
    with pytest.raises(ValueError, match=f"is a folder.*pass '{run / 'model.safetensors'}'"):
        load_recipe(_write(tmp_path, model={"checkpoint": str(run)}, datasets=[TOY], output_dir="x"))


def test_cli_dry_run_and_a_real_run_from_a_zarr_path(tmp_path, capsys):
    sdata = st.datasets.toy(n_obs=120, n_genes=24, n_domains=3, seed=0)
    sdata.write(tmp_path / "slide.zarr")
    path = _write(
        tmp_path,
        model="storm-tiny",
        datasets=[{"path": str(tmp_path / "slide.zarr"), "group": "P1"}, TOY],
        training={"max_steps": 2, "batch_size": 16},
        trainer={"accelerator": "cpu", "devices": 1},
        output_dir=str(tmp_path / "out"),
    )
    assert main(["pretrain", "--config", str(path), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["datasets"] == ["slide", "toy(n_obs=120, n_genes=24, n_domains=3, seed=0)"]
    assert main(["pretrain", "--config", str(path), "--set", "split.val_groups=[P1]"]) == 0
    assert "trained StormModel(storm-tiny" in capsys.readouterr().out
    model = StormModel.load(tmp_path / "out" / "model.safetensors")
    assert model.manifest["provenance"]["recipe"]["split"] == {"val_groups": ["P1"]}
    assert model.manifest["datasets"][0]["source"] == {"path": str((tmp_path / "slide.zarr").resolve())}
    assert (tmp_path / "out" / "logs" / "metrics.csv").is_file()
    with pytest.raises(SystemExit, match="already exists"):
        main(["pretrain", "--config", str(path)])
    # A mistake found only while running is a one-line message, not a traceback.
    bad = _write(tmp_path, datasets=[{"loader": "toy", "args": {"n_obs": -5}}], output_dir=str(tmp_path / "o2"))
    assert main(["pretrain", "--config", str(bad), "--dry-run"]) == 0  # argument values are the loader's to check
    with pytest.raises(SystemExit, match="^storm-sc pretrain: .*n_obs"):
        main(["pretrain", "--config", str(bad)])


def test_fit_checks_validation_groups_before_preparing_slides(monkeypatch):
    import storm_sc.training._fit as fit_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("slides were prepared before the validation groups were checked")

    monkeypatch.setattr(fit_module, "prepare_slides", must_not_run)
    slides = [
        st.training.TrainingSlide(st.datasets.toy(n_obs=60, n_genes=12, seed=i), group=g) for i, g in enumerate("AB")
    ]
    model = StormModel("storm-tiny", [f"gene_{i:04d}" for i in range(12)], seed=0)
    with pytest.raises(ValueError, match=r"\['a'\] match no slide group; groups are \['A', 'B'\]"):
        model.fit(slides, val_groups=["a"], max_epochs=1)
    with pytest.raises(ValueError, match="every group"):
        model.fit(slides, val_groups=["A", "B"], max_epochs=1)


def test_shipped_configs_are_valid(monkeypatch):
    from tests._paths import REPO_ROOT

    configs = sorted((REPO_ROOT / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {"storm-tiny-toy.yaml", "storm-small.yaml", "storm-base.yaml"}
    for path in configs:
        recipe = load_recipe(path)
        assert recipe.datasets
        assert recipe.output_dir


def test_launch_follows_torchrun_and_slurm(monkeypatch):
    for var in ("LOCAL_WORLD_SIZE", "WORLD_SIZE", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var, raising=False)
    plain = _launch_settings(TrainingConfig(accelerator="cpu"))
    assert _launch_settings(TrainingConfig(accelerator="gpu"))["devices"] == 1
    assert plain == {
        "accelerator": "cpu",
        "devices": 1,  # not Lightning's "auto", which would start DDP over every GPU of a multi-GPU machine
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "32-true",
    }
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("WORLD_SIZE", "8")
    torchrun = _launch_settings(TrainingConfig(accelerator="cpu"))
    assert (torchrun["devices"], torchrun["num_nodes"], torchrun["strategy"]) == (4, 2, "ddp")
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2(x3)")
    monkeypatch.setenv("SLURM_NNODES", "3")
    monkeypatch.setenv("SLURM_JOB_NAME", "storm")
    slurm = _launch_settings(TrainingConfig(accelerator="cpu"))
    assert (slurm["devices"], slurm["num_nodes"], slurm["strategy"]) == (2, 3, "ddp")
    explicit = _launch_settings(TrainingConfig(accelerator="cpu", devices=1))
    assert explicit["devices"] == 1
    assert explicit["strategy"] == "auto"


@pytest.mark.parametrize(("capability", "expected"), [((7, 0), "32-true"), ((7, 5), "32-true"), ((8, 0), "bf16-mixed")])
def test_default_precision_follows_native_bf16(monkeypatch, capability, expected):
    # A V100 (7.0) or T4 (7.5) only emulates bf16, more slowly than float32; Ampere (8.0) and newer compute in it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert _launch_settings(TrainingConfig(accelerator="gpu"))["precision"] == expected
    assert _launch_settings(TrainingConfig(accelerator="gpu", precision="16-mixed"))["precision"] == "16-mixed"
    assert native_bf16(torch.device("cpu")) is False


def test_numeric_groups_are_groups(tmp_path):
    datasets = [{**TOY, "group": 0}, {**TOY, "name": "other", "group": 1}]
    recipe = load_recipe(_write(tmp_path, datasets=datasets, output_dir="x", split={"val_groups": [0]}))
    assert recipe.training.val_groups == ("0",)  # group names are strings, as the slides' are


@pytest.mark.parametrize("folder", ["runs #1", "2024", "yes", "0.10"])
def test_cli_output_dir_is_a_path_as_given(tmp_path, capsys, folder):
    path = _write(tmp_path, model="storm-tiny", datasets=[TOY], output_dir="x")
    assert main(["pretrain", "--config", str(path), "--output-dir", folder, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["output_dir"] == folder


@pytest.mark.parametrize("value", [2024, True, 0.1, None, ""])
def test_a_non_string_output_dir_is_refused(tmp_path, value):
    with pytest.raises(ValueError, match="`output_dir` must be a folder path.*quote a name"):
        load_recipe(_write(tmp_path, datasets=[TOY], output_dir=value))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("trainer.accelerator=gpux", r"`accelerator` must be one of \['auto', 'cpu', 'gpu', 'cuda'"),
        ("trainer.strategy=ddpx", r"`strategy` must be one of \['auto', 'ddp'"),
        ("trainer.precision=fp64", r"`precision` must be None \(automatic\) or one of \['32-true'"),
    ],
)
def test_unknown_trainer_settings_are_refused_by_a_dry_run(tmp_path, setting, message):
    path = _write(tmp_path, datasets=[TOY], output_dir=str(tmp_path / "o"))
    with pytest.raises(SystemExit, match=f"^storm-sc pretrain: Invalid training config: {message}"):
        main(["pretrain", "--config", str(path), "--set", setting, "--dry-run"])


def test_a_gpu_accelerator_without_a_gpu_is_refused_before_any_slide_is_read(tmp_path, monkeypatch):
    import storm_sc.training._fit as fit_module
    import storm_sc.training._recipe as recipe_module

    def must_not_run(*args, **kwargs):
        raise AssertionError("slides were read before the accelerator was checked")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(recipe_module, "_slide", must_not_run)
    monkeypatch.setattr(fit_module, "prepare_slides", must_not_run)
    path = _write(tmp_path, datasets=[TOY], output_dir=str(tmp_path / "o"))
    fix = r"no CUDA GPU that torch can use; pass accelerator='cpu'"
    with pytest.raises(SystemExit, match=f"^storm-sc pretrain: accelerator='gpu', but this machine has {fix}"):
        main(["pretrain", "--config", str(path), "--set", "trainer.accelerator=gpu"])
    model = StormModel("storm-tiny", [f"gene_{i:04d}" for i in range(24)], seed=0)
    toy = st.datasets.toy(n_obs=30, n_genes=24, seed=0)
    with pytest.raises(ValueError, match=fix):
        model.fit(toy, max_epochs=1, accelerator="cuda")
    with pytest.raises(ValueError, match=fix):
        st.training.pretrain(toy, model="storm-tiny", max_epochs=1, accelerator="gpu")


def test_exponent_floats_without_a_dot_are_numbers(tmp_path):
    # PyYAML reads `1e-3` (no dot) as a string
    path = tmp_path / "run.yaml"
    text = "model: {name: storm-tiny, overrides: {dropout: 1e-1}}\ndatasets: [{loader: toy}]\noutput_dir: x\n"
    path.write_text(text + "training: {lr: 1e-3, weight_decay: 5E-2}\n")
    recipe = load_recipe(path, overrides=["split.val_fraction=1e-1"])
    assert (recipe.training.lr, recipe.training.weight_decay, recipe.training.val_fraction) == (1e-3, 5e-2, 0.1)
    assert recipe.model.dropout == 0.1
    with pytest.raises(ValueError, match=r"`lr` must be a positive number \(got 'fast'\)"):
        load_recipe(path, overrides=["training.lr=fast"])


def test_trainer_names_are_taken_in_any_case_and_numpy_precisions_as_integers():
    import numpy as np

    from storm_sc.training import TrainingConfig

    options = TrainingConfig(accelerator="CPU", strategy="DDP", precision=np.int64(32))  # as Lightning takes them
    assert options.precision == 32 and type(options.precision) is int
    json.dumps(options.to_dict())  # the manifest stores it


def test_cli_names_resume_for_an_interrupted_run(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"cut short")
    path = _write(tmp_path, model="storm-tiny", datasets=[TOY], output_dir=str(out))
    with pytest.raises(SystemExit, match="interrupted run.*--resume"):
        main(["pretrain", "--config", str(path)])
    for resume in (["--resume"], ["--resume", "auto"]):
        with pytest.raises(SystemExit, match="cannot be read as a storm_sc run checkpoint"):
            main(["pretrain", "--config", str(path), *resume])


def test_a_requeued_recipe_says_once_that_it_resumes(tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"cut short")
    path = _write(tmp_path, model="storm-tiny", datasets=[TOY], output_dir=str(out))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with caplog.at_level("INFO", logger="storm_sc"), pytest.raises(SystemExit, match="cannot be read"):
        main(["pretrain", "--config", str(path)])
    assert caplog.text.count("A requeued SLURM job: resuming") == 1


def test_cli_an_interrupted_run_exits_non_zero_and_names_resume(tmp_path, monkeypatch, capsys):
    import storm_sc.training as training

    out = tmp_path / "out"
    path = _write(tmp_path, model="storm-tiny", datasets=[TOY], output_dir=str(out))
    plan = json.loads(main(["pretrain", "--config", str(path), "--dry-run"]) == 0 and capsys.readouterr().out)
    assert plan["run"] == "new"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"an epoch")
    assert main(["pretrain", "--config", str(path), "--dry-run", "--resume"]) == 0
    assert json.loads(capsys.readouterr().out)["run"] == f"resume from {out / 'checkpoints' / 'last.ckpt'}"
    with pytest.raises(SystemExit, match="interrupted run"):  # what the real run would say
        main(["pretrain", "--config", str(path), "--dry-run"])

    def pre_empted(recipe, **kwargs):
        raise KeyboardInterrupt("SIGTERM")

    monkeypatch.setattr(training, "run_recipe", pre_empted)
    # Lightning exits with status 0 on SIGTERM: a job chain would take the pre-empted run for a finished one
    assert main(["pretrain", "--config", str(path), "--resume"]) == 143
    assert "rerun the same command with --resume" in capsys.readouterr().err
