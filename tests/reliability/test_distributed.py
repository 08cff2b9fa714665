"""Embedding and prediction of many slides on a Dask cluster: the same results as in-process, written atomically."""

from __future__ import annotations

import logging

import dask
import dask.array as da
import numpy as np
import pytest
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity

import storm_sc as st
from storm_sc.models import CheckpointError, StormModel
from storm_sc.tl._distributed import ModelPayload, check_client, map_slides
from tests.reliability._compare import differences, snapshot
from tests.reliability.conftest import toy_slide

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=logging.ERROR
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def _slides():
    # three slides of different sizes, one without an image (expression and context only)
    return [toy_slide(31, n_obs=60), toy_slide(32, n_obs=90), toy_slide(33, image=False, n_obs=45)]


def _broken_image(sdata):
    """The image's pixels cannot be read (a lazy array whose chunk fails): resolve passes, the worker fails."""
    image = sdata.images["toy_image"]
    shape = tuple(image.shape)
    failing = da.from_delayed(dask.delayed(np.reshape)(np.arange(5, dtype=np.uint8), shape), shape, np.uint8)
    sdata.images["toy_image"] = Image2DModel.parse(failing, dims=("c", "y", "x"),
                                                   transformations={"global": Identity()})  # fmt: skip
    return sdata


def test_payload_round_trip_is_bit_exact_and_verified(storm_tiny):
    payload = ModelPayload.from_model(storm_tiny)
    assert payload.to_model().weights_digest() == storm_tiny.weights_digest()
    data = bytearray(payload.checkpoint)
    data[-5] ^= 0x10
    with pytest.raises(CheckpointError, match="integrity"):
        ModelPayload(bytes(data), payload.digest).to_model()


def test_embeddings_on_the_cluster_equal_in_process(client, storm_tiny):
    slides = [st.io.resolve(s) for s in _slides()]
    options = {"batch_size": 32, "device": "cpu"}
    here = map_slides(StormModel.embed, storm_tiny, slides, verbose=False, **options)
    there = map_slides(StormModel.embed, storm_tiny, slides, client=client, verbose=False, **options)
    assert [e.shape for e in there] == [(60, 16), (90, 16), (45, 16)]
    for a, b in zip(here, there, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_predictions_on_the_cluster_equal_in_process(client, storm_tiny):
    slides = [st.io.resolve(s) for s in _slides()[:2]]
    genes = ["gene_0003", "gene_0007"]
    here = map_slides(StormModel.predict_expression, storm_tiny, slides, verbose=False, genes=genes, device="cpu")
    there = map_slides(StormModel.predict_expression, storm_tiny, slides, client=client, verbose=False, genes=genes,
                       device="cpu")  # fmt: skip
    for a, b in zip(here, there, strict=True):
        assert b.genes == genes and list(b.obs_names) == list(a.obs_names)
        np.testing.assert_allclose(b.mean, a.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.std, a.std, rtol=1e-5, atol=1e-6)


def test_a_failing_slide_raises_its_own_error_on_the_driver(client, storm_tiny):
    slides = [st.io.resolve(toy_slide(34)), st.io.resolve(_broken_image(toy_slide(35)))]
    with pytest.raises(ValueError, match="cannot reshape array of size 5"):
        map_slides(StormModel.embed, storm_tiny, slides, client=client, verbose=False)
    # the cluster is left clean and usable
    assert len(map_slides(StormModel.embed, storm_tiny, slides[:1], client=client, verbose=False)) == 1


def test_bad_clients_are_refused():
    with pytest.raises(TypeError, match=r"`client` must be a dask `distributed.Client`"):
        check_client("tcp://127.0.0.1:8786")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as c:
        pass
    with pytest.raises(ValueError, match="not running"):
        check_client(c)


def test_storm_embed_with_a_client_equals_in_process(client, storm_tiny):
    local, remote = _slides(), _slides()
    st.tl.storm_embed(local, storm_tiny, batch_size=32, device="cpu", verbose=False)
    st.tl.storm_embed(remote, storm_tiny, batch_size=32, device="cpu", client=client, verbose=False)
    for a, b in zip(local, remote, strict=True):
        np.testing.assert_allclose(b["table"].obsm["X_storm"], a["table"].obsm["X_storm"], rtol=1e-5, atol=1e-6)
        assert b["table"].uns["storm"]["X_storm"]["modalities"] == a["table"].uns["storm"]["X_storm"]["modalities"]


def test_predict_expression_of_many_slides_with_a_client(client, storm_tiny):
    local, remote = _slides()[:2], _slides()[:2]
    here = st.tl.predict_expression(local, storm_tiny, device="cpu", verbose=False)
    there = st.tl.predict_expression(remote, storm_tiny, device="cpu", client=client, verbose=False)
    assert isinstance(there, list) and len(there) == 2
    for a, b, sdata in zip(here, there, remote, strict=True):
        np.testing.assert_allclose(b.X, a.X, rtol=1e-5, atol=1e-6)
        assert sdata.tables["storm_predicted"] is b


@pytest.mark.parametrize("tool", ["storm_embed", "predict_expression"])
def test_a_failure_on_any_worker_leaves_every_slide_unchanged(client, storm_tiny, tool):
    slides = [toy_slide(36), toy_slide(37), _broken_image(toy_slide(38))]
    before = snapshot(slides)
    with pytest.raises(ValueError, match="cannot reshape"):
        getattr(st.tl, tool)(slides, storm_tiny, client=client, verbose=False)
    assert differences(before, slides) == []


def test_tools_refuse_a_bad_client_before_any_work(storm_tiny):
    sdata = toy_slide(39)
    before = snapshot(sdata)
    with pytest.raises(TypeError, match="`client` must be a dask"):
        st.tl.storm_embed([sdata], storm_tiny, client="tcp://127.0.0.1:8786")
    with pytest.raises(TypeError, match="`client` must be a dask"):
        st.tl.predict_expression([sdata], storm_tiny, client=object())
    assert differences(before, sdata) == []
