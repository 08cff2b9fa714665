"""The shipped registry and the download path, against a loopback HTTP server (no internet needed)."""

from __future__ import annotations

import functools
import hashlib
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import storm_sc as st
from storm_sc.datasets import _fetch
from tests._paths import DATA_DIR, real_data

_HER2ST_C1 = [
    "her2st/data/ST-cnts/C1.tsv.gz",
    "her2st/data/ST-spotfiles/C1_selection.tsv",
    "her2st/data/ST-pat/lbl/C1_labeled_coordinates.tsv",
    "her2st/res/ST-cluster/lbl/C1-cluster-annotation.tsv.gz",
    "her2st/her_hvg_cut_1000_from_HisToGene.npy",
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; STORM_SC_DATA_MIRROR points the downloads at it."""
    root = tmp_path / "www"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(_fetch.MIRROR_ENV, f"http://127.0.0.1:{httpd.server_address[1]}")
    yield root
    httpd.shutdown()
    httpd.server_close()


def _publish(root: Path, relpath: str, content: bytes | None = None) -> Path:
    """Put a file where the mirror serves it: <host>/<path of its upstream URL>."""
    target = root / _fetch.file_url(relpath).split("://", 1)[1]
    target.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        shutil.copyfile(DATA_DIR / relpath, target)
    else:
        target.write_bytes(content)
    return target


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("STORM_SC_DATA_DIR", str(cache))
    return cache


# ---------------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------------
def test_registry_is_pinned_and_well_formed():
    registry = _fetch.registry()
    for name, source in registry["sources"].items():
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]), name
        assert "/" in source["repo"]
    for relpath, entry in registry["files"].items():
        assert entry["sha256"] is None or re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]), relpath
        url = _fetch.file_url(relpath)
        if entry.get("source"):
            src = registry["sources"][entry["source"]]
            assert url == f"https://raw.githubusercontent.com/{src['repo']}/{src['commit']}/{entry['path']}"
        if url is None or entry["sha256"] is None:
            assert entry.get("note"), f"{relpath}: undownloadable or unhashed entries must say why"


def test_registry_hashes_match_the_byte_identical_local_copies(data_dir):
    checked = 0
    for relpath, entry in _fetch.registry()["files"].items():
        local = data_dir / relpath
        if entry["sha256"] is None or not local.is_file():
            continue
        assert _sha256(local) == entry["sha256"], relpath
        checked += 1
    assert checked > 150


def test_unregistered_path_is_refused():
    with pytest.raises(KeyError, match="not in the storm_sc dataset registry"):
        _fetch.fetch("her2st/not_a_file.tsv")


# ---------------------------------------------------------------------------------------------------------------------
# Local files: used as they are, no network
# ---------------------------------------------------------------------------------------------------------------------
def test_existing_file_is_used_unchecked(empty_cache, monkeypatch):
    relpath = "her2st/data/ST-spotfiles/C2_selection.tsv"
    local = empty_cache / relpath
    local.parent.mkdir(parents=True)
    local.write_text("re-packaged copy, not byte-identical\n")
    # a mirror on a closed port: any download attempt would fail
    monkeypatch.setenv(_fetch.MIRROR_ENV, "http://127.0.0.1:9")
    assert _fetch.fetch(relpath) == local
    assert local.read_text() == "re-packaged copy, not byte-identical\n"


def test_file_without_source_gives_actionable_error(empty_cache):
    with pytest.raises(FileNotFoundError, match="cannot be downloaded.*STORM_SC_DATA_DIR"):
        st.datasets.mob()
    assert not empty_cache.exists() or not any(empty_cache.rglob("*"))


# ---------------------------------------------------------------------------------------------------------------------
# Downloads from the loopback mirror
# ---------------------------------------------------------------------------------------------------------------------
def test_download_is_verified_and_cached(server, empty_cache):
    real_data("her2st", "data", "ST-spotfiles")
    relpath = "her2st/data/ST-spotfiles/C2_selection.tsv"
    _publish(server, relpath)
    path = _fetch.fetch(relpath, verbose=False)
    assert path == empty_cache / relpath
    assert _sha256(path) == _fetch.entry(relpath)["sha256"]
    # a second call finds it in the cache even with the server gone
    shutil.rmtree(server / "raw.githubusercontent.com")
    assert _fetch.fetch(relpath) == path


def test_tampered_download_is_rejected_and_not_kept(server, empty_cache):
    real_data("her2st", "data", "ST-spotfiles")
    relpath = "her2st/data/ST-spotfiles/C2_selection.tsv"
    original = (DATA_DIR / relpath).read_bytes()
    _publish(server, relpath, original.replace(b"6930.58", b"6930.59"))
    with pytest.raises(ValueError, match="does not match the sha256"):
        _fetch.fetch(relpath, verbose=False)
    assert not (empty_cache / relpath).exists()


def test_loader_downloads_into_an_empty_data_dir(server, empty_cache):
    real_data("her2st", "data", "ST-pat", "lbl")
    for relpath in _HER2ST_C1:
        _publish(server, relpath)
    sdata = st.datasets.her2st("C1", verbose=False)
    assert sdata.tables["table"].n_obs == 176
    assert sdata.tables["table"].obs["pathologist_label"].notna().all()
    downloaded = sorted(str(p.relative_to(empty_cache)) for p in empty_cache.rglob("*") if p.is_file())
    assert downloaded == sorted(_HER2ST_C1)


def test_unreachable_file_gives_clear_error_and_leaves_no_partial_file(server, empty_cache):
    # nothing is published: the mirror answers 404
    with pytest.raises(OSError, match="Could not download her2st/data/ST-cnts/C1.tsv.gz"):
        st.datasets.her2st("C1", verbose=False)
    assert not any(p.is_file() for p in empty_cache.rglob("*"))


def _publish_dlpfc_copy(server: Path, sample: str, *, image: bool, other_sample: str | None = None) -> None:
    """Serve 151675's files at the addresses of ``sample`` (its lowres image only with ``image``), with a barcode ->
    layer map holding ``sample``'s rows and, optionally, rows of ``other_sample`` all labelled WM."""
    real_data("dlpfc_151675")
    names = ["spatial/tissue_positions_list.csv", "spatial/scalefactors_json.json", "filtered_feature_bc_matrix.h5"]
    for name in names + ["spatial/tissue_lowres_image.png"] * image:
        _publish(server, f"dlpfc_{sample}/{name}", (DATA_DIR / "dlpfc_151675" / name).read_bytes())
    layers = [
        line.split(",") for line in (DATA_DIR / "dlpfc_151675/layer_annotations.csv").read_text().splitlines()[1:]
    ]
    rows = [f"{barcode}\t{sample}\t{layer}\n" for barcode, layer in layers]
    rows += [f"{barcode}\t{other_sample}\tWM\n" for barcode, _ in layers] if other_sample else []
    _publish(server, f"dlpfc_{sample}/barcode_level_layer_map.tsv", "".join(rows).encode())


def test_every_spatiallibd_dlpfc_section_downloads_with_its_layers(server, empty_cache, caplog):
    # 151673 is published upstream like 151675; the layer map of all samples holds 151507's rows too, which the
    # loader must leave out.
    _publish_dlpfc_copy(server, "151673", image=True, other_sample="151507")
    sdata = st.datasets.dlpfc("151673", verbose=False)
    table = sdata.tables["table"]
    assert table.n_obs == 3592 and sdata.images
    counts = table.obs["layer"].value_counts()
    assert counts["L3"] == 771 and counts["L1"] > 0  # the 151507 rows (all WM) were not read
    assert "no sha256 recorded yet" in caplog.text  # unhashed downloads are announced as unverified
    assert (empty_cache / "dlpfc_151673" / "filtered_feature_bc_matrix.h5").is_file()


def test_visium_section_without_a_published_image_reads_expression_only(server, empty_cache, caplog):
    _publish_dlpfc_copy(server, "151676", image=False)
    sdata = st.datasets.dlpfc("151676", verbose=False)  # the mirror answers 404 for the lowres image
    assert not sdata.images and sdata.tables["table"].obs["layer"].notna().sum() == 3566
    assert "tissue_lowres_image.png could not be fetched" in caplog.text
