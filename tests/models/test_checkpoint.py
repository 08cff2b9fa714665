import functools
import http.server
import json
import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import storm_sc as st
from storm_sc.models import CheckpointError, IncompatibleCheckpointError, StormModel
from storm_sc.models._checkpoint import content_digest, file_sha256
from storm_sc.models._pretrained import _ENTRIES, WEIGHTS_DIR, reference_name, register_pretrained


def _rewrite(path, target, **metadata_changes):
    """Copy a checkpoint with some header fields changed (None: removed), re-hashed as a genuine writer would."""
    with safe_open(str(path), "pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    meta.update(metadata_changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    meta["content_sha256"] = content_digest(tensors, meta)
    save_file(tensors, str(target), metadata=meta)
    return target


@pytest.fixture
def saved(tiny_model, tmp_path):
    tiny_model.manifest = {"datasets": [{"name": "toy", "sha256": {"expression": "ab" * 32}}], "split": {"seed": 0}}
    return tiny_model.save(tmp_path / "model.safetensors")


@pytest.fixture
def registry():
    before = dict(_ENTRIES)
    yield
    _ENTRIES.clear()
    _ENTRIES.update(before)


def test_round_trip_is_bit_exact(tiny_model, saved, toy_sdata):
    loaded = StormModel.load(saved)
    assert loaded.weights_digest() == tiny_model.weights_digest()
    assert loaded.config == tiny_model.config
    assert loaded.vocabulary == tiny_model.vocabulary
    assert loaded.manifest == tiny_model.manifest
    inputs = tiny_model.prepare(toy_sdata, verbose=False)
    np.testing.assert_array_equal(loaded.embed(inputs, verbose=False), tiny_model.embed(inputs, verbose=False))
    info = StormModel.inspect(saved)
    assert info["storm_sc_version"] == st.__version__
    assert info["n_genes"] == len(tiny_model.vocabulary)
    assert info["config"]["name"] == "storm-tiny"
    assert info["storage_dtype"] == "float32"


def test_save_refuses_to_overwrite_and_can_store_half_precision(tiny_model, saved, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tiny_model.save(saved)
    tiny_model.save(saved, overwrite=True)
    half = tiny_model.save(tmp_path / "half", dtype="float16")
    assert half.name == "half.safetensors"
    assert half.stat().st_size < 0.6 * saved.stat().st_size
    loaded = StormModel.load(half)
    for (name, a), b in zip(tiny_model.network.state_dict().items(), loaded.network.state_dict().values(), strict=True):
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(b, a, atol=2e-3 * (1 + a.abs().max().item()), rtol=1e-2)
    with pytest.raises(ValueError, match="dtype"):
        tiny_model.save(tmp_path / "x", dtype="int8")


def test_a_bare_name_saves_and_loads_as_one_file_and_a_folder_is_refused(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tiny_model.save("mine") == Path("mine.safetensors")
    assert StormModel.load("mine").vocabulary == tiny_model.vocabulary  # what save("mine") wrote
    assert StormModel.from_pretrained("mine").vocabulary == tiny_model.vocabulary
    (tmp_path / "runs").mkdir()
    with pytest.raises(IsADirectoryError, match="runs is a folder"):
        tiny_model.save(tmp_path / "runs")  # not a sibling file runs.safetensors
    assert not (tmp_path / "runs.safetensors").exists()


def test_another_suffix_is_written_as_safetensors_with_a_warning(tiny_model, tmp_path, storm_log):
    with storm_log.at_level(logging.WARNING, logger="storm_sc"):
        written = tiny_model.save(tmp_path / "model.pt")
    assert written == tmp_path / "model.pt"  # what the user named, but not a torch.save pickle: said so
    assert any("safetensors format whatever its suffix" in r.getMessage() for r in storm_log.records)
    assert StormModel.load(written).vocabulary == tiny_model.vocabulary


def test_truncated_file_is_refused(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (len(data) // 2, 100, 4):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            StormModel.load(bad)


def test_tampered_weights_fail_the_integrity_check(saved, tmp_path):
    data = bytearray(saved.read_bytes())
    data[-3] ^= 0xFF  # the last bytes are tensor data
    bad = tmp_path / "tampered.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="integrity"):
        StormModel.load(bad)
    # editing the header by hand (without the writer) is caught as well
    with safe_open(str(saved), "pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    meta["manifest"] = json.dumps({"datasets": "swapped"})
    save_file(tensors, str(tmp_path / "header.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="integrity"):
        StormModel.load(tmp_path / "header.safetensors")


def test_incompatible_checkpoints_are_refused(saved, tmp_path, storm_log, monkeypatch):
    newer = _rewrite(saved, tmp_path / "newer.safetensors", storm_sc_version="99.0.0")
    with pytest.raises(IncompatibleCheckpointError, match="newer than the installed"):
        StormModel.load(newer)
    # ... but its header can still be read, to see what it is and which release it needs
    header = StormModel.inspect(newer)
    assert header["storm_sc_version"] == "99.0.0" and header["config"] == StormModel.inspect(saved)["config"]
    assert "newer than the installed" in storm_log.text and "Showing its header" in storm_log.text
    # a source tree run without installing (no package metadata) has no release to compare against
    monkeypatch.setattr(st, "__version__", "0.0.0+unknown")
    assert StormModel.load(newer).config == StormModel.load(saved).config
    monkeypatch.undo()
    storm_log.clear()
    older = _rewrite(saved, tmp_path / "older.safetensors", storm_sc_version="0.0.1")  # a real release, not "none"
    assert StormModel.load(older).config == StormModel.load(saved).config
    assert "does not say which storm_sc wrote it" not in storm_log.text
    unversioned = _rewrite(saved, tmp_path / "unversioned.safetensors", storm_sc_version=None)
    assert StormModel.load(unversioned).config == StormModel.load(saved).config
    assert "does not say which storm_sc wrote it" in storm_log.text
    fmt = _rewrite(saved, tmp_path / "format.safetensors", format_version="7")
    with pytest.raises(IncompatibleCheckpointError, match="format 7"):
        StormModel.load(fmt)
    vocab = st.pp.GeneVocabulary.from_genes(["A", "B", "C"]).to_dict()
    wrong_vocab = _rewrite(saved, tmp_path / "vocab.safetensors", vocabulary=json.dumps(vocab))
    with pytest.raises(IncompatibleCheckpointError, match="vocabulary lists 3 genes"):
        StormModel.load(wrong_vocab)
    config = StormModel.inspect(saved)["config"]
    wider = _rewrite(saved, tmp_path / "config.safetensors", config=json.dumps(config | {"hidden_dim": 64}))
    with pytest.raises(IncompatibleCheckpointError, match="do not fit the architecture"):
        StormModel.load(wider)
    future = _rewrite(saved, tmp_path / "future.safetensors", config=json.dumps(config | {"quantum": True}))
    with pytest.raises(IncompatibleCheckpointError, match="newer storm_sc"):
        StormModel.load(future)


def test_not_a_storm_checkpoint(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    with pytest.raises(CheckpointError, match="not a STORM checkpoint"):
        StormModel.load(plain)
    with pytest.raises(CheckpointError, match="single"):
        StormModel.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        StormModel.load(tmp_path / "missing.safetensors")


def test_a_training_output_folder_is_refused_naming_its_model_file(saved):
    run = saved.parent
    for load in (StormModel.load, StormModel.from_pretrained):
        with pytest.raises(CheckpointError, match=f"is a folder.*pass '{saved}'"):
            load(run)


def test_from_pretrained_local_path_and_missing_reference(saved, tiny_model, registry):
    assert StormModel.from_pretrained(saved).weights_digest() == tiny_model.weights_digest()
    assert StormModel.from_pretrained(str(saved)).weights_digest() == tiny_model.weights_digest()
    _ENTRIES.pop(reference_name())  # a build without its reference checkpoint
    with pytest.raises(FileNotFoundError, match="no reference checkpoint yet"):
        StormModel.from_pretrained()
    with pytest.raises(KeyError, match="registered"):
        StormModel.from_pretrained("storm-nonexistent")
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        StormModel.from_pretrained("runs/missing/model.safetensors")


def test_bundled_reference_checkpoint():
    name = reference_name()
    entry = _ENTRIES[name]
    path = WEIGHTS_DIR / entry.filename
    # It ships inside the package: 3.2 MB of network, 2.6 MB of program loadings, 7.4 MB of expression readout.
    assert path.stat().st_size <= 16 * 2**20
    assert file_sha256(path) == entry.sha256
    model = StormModel.from_pretrained()
    assert model.weights_digest() == StormModel.from_pretrained(name).weights_digest()
    assert model.pretrained_name == name and repr(model).startswith(f"StormModel({name}: storm-tiny")
    assert StormModel.load(path).pretrained_name is None  # a file is not a release
    manifest = model.manifest
    assert {d["name"] for d in manifest["datasets"]} >= {"xenium_lung_he", "mob_he(replicate=1)"}
    assert set(manifest["split"]["val_groups"]) == {"mob", "ffpe_kidney_organoid"}
    sdata = st.datasets.toy(n_obs=150, n_genes=40, n_domains=3, seed=0)
    sdata["table"].var_names = list(model.vocabulary.symbols[100:140])  # genes the reference knows
    for use_image, use_expression in [(True, True), (True, False), (False, True)]:
        emb = model.embed(sdata, use_image=use_image, use_expression=use_expression, verbose=False)
        assert emb.shape == (150, model.config.embed_dim) and np.isfinite(emb).all()


def test_from_pretrained_by_name_from_the_cache(saved, tiny_model, registry):
    name, fname = "test-cached", "test-cached.safetensors"
    register_pretrained(name, filename=fname, sha256=file_sha256(saved))
    with pytest.raises(FileNotFoundError, match="place test-cached.safetensors"):
        StormModel.from_pretrained(name)
    cache = st.settings.data_dir / "models"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / fname).write_bytes(saved.read_bytes())
    assert StormModel.from_pretrained(name).weights_digest() == tiny_model.weights_digest()
    (cache / fname).write_bytes(saved.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="does not match the registered sha256"):
        StormModel.from_pretrained(name)
    with pytest.raises(ValueError, match="64 hex"):
        register_pretrained("bad", filename="x.safetensors", sha256="1234")


@pytest.fixture
def http_folder(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args, **kwargs: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_from_pretrained_downloads_and_verifies(saved, tiny_model, registry, http_folder):
    folder, url = http_folder
    (folder / "served.safetensors").write_bytes(saved.read_bytes())
    sha = file_sha256(saved)
    register_pretrained("test-download", filename="dl.safetensors", sha256=sha, url=f"{url}/served.safetensors")
    model = StormModel.from_pretrained("test-download", verbose=False)
    assert model.weights_digest() == tiny_model.weights_digest()
    cached = st.settings.data_dir / "models" / "dl.safetensors"
    assert file_sha256(cached) == sha
    # a tampered file on the server is refused and not used
    data = bytearray(saved.read_bytes())
    data[-3] ^= 0xFF
    (folder / "tampered.safetensors").write_bytes(bytes(data))
    register_pretrained("test-tampered", filename="tampered.safetensors", sha256=sha, url=f"{url}/tampered.safetensors")
    with pytest.raises(CheckpointError, match="does not match its registered sha256"):
        StormModel.from_pretrained("test-tampered", verbose=False)
    assert not (st.settings.data_dir / "models" / "tampered.safetensors").exists()
