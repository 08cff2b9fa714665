"""Streaming and memory properties that let the tools run on slides of a million cells (benchmarks/scale.py).

Wall-clock speed is measured in the benchmark, never here. These tests check what makes memory independent of
the slide size: patches streamed from the image equal the cached ones, windows are read in bounded blocks, an
embedding pass keeps nothing per observation beyond its outputs, and prediction holds its outputs only once.
Memory is measured with tracemalloc (numpy and Python allocations; torch's are not traced, and only the
``(n, hidden_dim)`` token table of the network lives there), and with the process's peak resident size where
torch's allocations matter.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import storm_sc as st
from benchmarks._scale_data import SlideSpec, lazy_image, table
from storm_sc.models import StormModel, get_config
from storm_sc.models._inference import embed_inputs, predict_inputs, spread_picks
from storm_sc.models._inputs import StreamedPatches, prepare_inputs
from storm_sc.models._neighbors import pick
from storm_sc.pp._patches import locality_order
from storm_sc.pp._pyramid import GROUP_OVERREAD, group_windows, read_windows

# A region radius that keeps neighbour building cheap at 10k cells; it does not change what is streamed.
CONFIG = get_config("storm-tiny", region_radius_um=60.0)
N_SMALL, N_LARGE = 1_200, 12_000


def cell_slide(n_obs: int, *, n_genes: int = 40, seed: int = 0):
    """A Xenium-like slide (cells 12 um apart, in random table order) with an H&E-like image at 2 um/px."""
    spec = SlideSpec(n_obs=n_obs, n_genes=n_genes, mpp=2.0, seed=seed)
    adata = table(spec)
    image = lazy_image(spec).compute()
    return st.io.from_arrays(adata, np.asarray(adata.obsm["spatial"]) / spec.mpp, image, mpp=spec.mpp)


@pytest.fixture(scope="module")
def model() -> StormModel:
    genes = [f"GENE{i:04d}" for i in range(40)]
    return StormModel(CONFIG, genes, seed=0)


@pytest.fixture(scope="module")
def small_slide():
    return cell_slide(600)


def _prepare(model: StormModel, sdata, *, stream: bool, use_expression: bool = True):
    return prepare_inputs(sdata, config=model.config, vocabulary=model.vocabulary, use_expression=use_expression,
                          stream_patches=stream, verbose=False)  # fmt: skip


def test_streamed_patches_equal_the_cache(model, small_slide):
    cached = _prepare(model, small_slide, stream=False)
    streamed = _prepare(model, small_slide, stream=True)
    patches = streamed.patches
    assert isinstance(patches, StreamedPatches)
    assert patches.shape == cached.patches.shape and patches.dtype == np.uint8 and len(patches) == cached.n_obs
    rows = np.array([599, 3, 3, 250, 0])
    np.testing.assert_array_equal(patches[rows], cached.patches[rows])
    np.testing.assert_array_equal(patches[7], cached.patches[7])
    np.testing.assert_array_equal(patches[10:40:3], cached.patches[10:40:3])
    mask = np.zeros(cached.n_obs, dtype=bool)
    mask[[5, 77, 420]] = True
    np.testing.assert_array_equal(patches[mask], cached.patches[mask])
    np.testing.assert_array_equal(patches[[4, 9], 1], cached.patches[[4, 9], 1])
    np.testing.assert_array_equal(np.asarray(patches), cached.patches)


def test_embedding_and_prediction_are_the_same_streamed_or_cached(model, small_slide):
    cached = _prepare(model, small_slide, stream=False)
    streamed = _prepare(model, small_slide, stream=True)
    for level in ("joint", "region"):
        a = embed_inputs(model.network, cached, level=level, batch_size=64, device="cpu", verbose=False)
        b = embed_inputs(model.network, streamed, level=level, batch_size=64, device="cpu", verbose=False)
        np.testing.assert_array_equal(a, b)
    ids = np.arange(len(model.vocabulary))
    mean_a, std_a = predict_inputs(model.network, cached, ids, batch_size=64, device="cpu", verbose=False)
    mean_b, std_b = predict_inputs(model.network, streamed, ids, batch_size=64, device="cpu", verbose=False)
    np.testing.assert_array_equal(mean_a, mean_b)
    np.testing.assert_array_equal(std_a, std_b)


def test_windows_read_in_blocks_equal_direct_slicing():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (3, 300, 400), dtype=np.uint8)
    padded = np.full((3, 300 + 200, 400 + 200), 255, dtype=np.uint8)
    padded[:, 100:400, 100:500] = image
    import dask.array as da

    data = da.from_array(image, chunks=(3, 128, 128))
    scattered = np.stack([rng.uniform(-40, 440, 40), rng.uniform(-40, 340, 40)], axis=1)  # some across the edges
    centres = np.concatenate([scattered, rng.uniform(150, 170, (40, 2))])
    boxes = [(int(y) - 20, int(y) + 21, int(x) - 20, int(x) + 21) for x, y in centres]
    boxes.append((-90, -60, 10, 40))  # entirely outside: white
    for box, window in zip(boxes, read_windows(data, boxes), strict=True):
        y0, y1, x0, x1 = box
        np.testing.assert_array_equal(window, padded[:, y0 + 100 : y1 + 100, x0 + 100 : x1 + 100])


def test_window_groups_bound_what_is_read():
    rng = np.random.default_rng(1)
    clustered = rng.uniform(0, 150, (256, 2)).astype(int)
    scattered = rng.uniform(0, 20_000, (256, 2)).astype(int)
    for centres, most_groups in ((clustered, 4), (scattered, 256)):
        boxes = [(y, y + 56, x, x + 56) for x, y in centres]
        groups = group_windows(boxes)
        assert sorted(i for g in groups for i in g) == list(range(len(boxes)))
        assert len(groups) <= most_groups
        for g in groups:
            b = np.asarray([boxes[i] for i in g])
            area = (b[:, 1].max() - b[:, 0].min()) * (b[:, 3].max() - b[:, 2].min())
            assert len(g) == 1 or area <= GROUP_OVERREAD * len(g) * 56 * 56
    # nearby windows share one read: a batch of neighbouring cells is one block
    assert len(group_windows([(y, y + 56, x, x + 56) for x, y in clustered])) == 1


def test_batches_in_locality_order_cover_compact_areas():
    rng = np.random.default_rng(2)
    gx, gy = np.meshgrid(np.arange(100), np.arange(100))
    xy = np.stack([gx.ravel(), gy.ravel()], axis=1) * 12.0 + rng.uniform(-4, 4, (10_000, 2))
    xy = xy[rng.permutation(len(xy))]
    order = locality_order(xy)
    assert sorted(order.tolist()) == list(range(len(xy)))
    slide_area = np.ptp(xy[:, 0]) * np.ptp(xy[:, 1])
    areas = [np.ptp(xy[b, 0]) * np.ptp(xy[b, 1]) for b in np.array_split(order, len(xy) // 64)]
    assert np.median(areas) < 0.03 * slide_area  # 64 of 10k cells: 0.6% of the slide at best
    in_table_order = [np.ptp(xy[b, 0]) * np.ptp(xy[b, 1]) for b in np.array_split(np.arange(len(xy)), len(xy) // 64)]
    assert np.median(in_table_order) > 0.5 * slide_area


def test_vectorised_region_picks_equal_pick():
    rng = np.random.default_rng(3)
    for width, k in ((24, 6), (8, 8), (3, 6), (40, 1), (100, 24)):
        pools = rng.integers(0, 10**6, (300, width))
        for i, c in enumerate(rng.integers(0, width + 1, 300)):
            pools[i, c:] = -1
        pools[rng.random(pools.shape) < 0.05] = -1
        np.testing.assert_array_equal(spread_picks(pools, k), np.stack([pick(r, k, None) for r in pools]))


def _traced_peak(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def streamed_pair(model):
    small = _prepare(model, cell_slide(N_SMALL, seed=4), stream=True, use_expression=False)
    large = _prepare(model, cell_slide(N_LARGE, seed=5), stream=True, use_expression=False)
    return small, large


def test_embedding_memory_does_not_grow_with_the_slide(model, streamed_pair):
    small, large = streamed_pair

    def embed(inputs):
        return embed_inputs(model.network, inputs, use_expression=False, batch_size=256, device="cpu", verbose=False)

    embed(small)  # warm-up: lazy imports and one-off buffers are not the slide's
    _, peak_small = _traced_peak(lambda: embed(small))
    out, peak_large = _traced_peak(lambda: embed(large))
    assert out.shape == (N_LARGE, CONFIG.embed_dim)
    per_obs = (peak_large - peak_small) / (N_LARGE - N_SMALL)
    print(f"embedding: {per_obs:.0f} B per observation, peak {peak_large / 2**20:.1f} MiB at {N_LARGE}")
    cached_per_obs = 3 * CONFIG.image_size**2  # what a patch cache would add
    # Left to grow: the output (64 B/obs), the reading order and its sort (~40 B/obs), nothing per patch.
    assert per_obs < 0.1 * cached_per_obs, f"{per_obs:.0f} B per observation"
    assert peak_large < 0.1 * N_LARGE**2  # nothing N x N, not even as bytes


def _rss_peak(fn) -> tuple[object, int]:
    """``fn()`` and the growth of this process's peak resident memory while it ran (Linux ``clear_refs``)."""

    def status(field: str) -> int:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field))

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # restart the peak (VmHWM) at the current resident size
    except OSError:
        pytest.skip("the peak resident memory cannot be reset here (/proc/self/clear_refs)")
    before = status("VmRSS:")
    out = fn()
    return out, status("VmHWM:") - before


def test_prediction_holds_its_outputs_once(streamed_pair):
    # torch allocations are invisible to tracemalloc: the process's resident memory is measured instead
    _, large = streamed_pair
    wide = StormModel(CONFIG, [f"GENE{i:04d}" for i in range(1000)], seed=0)
    ids = np.arange(len(wide.vocabulary))

    def predict():
        return predict_inputs(wide.network, large, ids, batch_size=256, device="cpu", verbose=False)

    predict()  # warm-up: lazy imports and one-off buffers are not the prediction's
    (mean, std), peak = _rss_peak(predict)
    outputs = mean.nbytes + std.nbytes  # 96 MB for 12k observations x 1000 genes
    # Concatenating per-batch parts would hold every output twice (>= 192 MB).
    assert peak < 1.5 * outputs + 16 * 2**20, f"peak {peak / 2**20:.0f} MiB for {outputs / 2**20:.0f} MiB of outputs"


def test_domains_build_no_dense_n_by_n():
    """Peak memory of storm_domains grows linearly with the observations: 4x more do not take 16x the memory."""
    import anndata as ad

    def peak_at(n: int) -> int:
        rng = np.random.default_rng(6)
        adata = ad.AnnData(np.zeros((n, 0), dtype=np.float32), obsm={"X_storm": rng.normal(size=(n, 16))})
        sdata = st.io.from_arrays(adata, rng.uniform(0, 2_000 * np.sqrt(n / 10_000), (n, 2)), mpp=1.0)
        st.tl.storm_domains(sdata, n_domains=4)  # warm-up
        _, peak = _traced_peak(lambda: st.tl.storm_domains(sdata, n_domains=4, overwrite=True))
        assert sdata["table"].obs["storm_domain"].nunique() == 4
        return peak

    small, large = peak_at(20_000), peak_at(80_000)
    # Linear: about 4x (measured 15 -> 59 MiB). Anything N x N would be 16x, and already 1.6 GB of float32 at 20k.
    assert large < 6 * small, f"peak {small / 2**20:.1f} MiB at 20k, {large / 2**20:.1f} MiB at 80k"
    assert small < 0.05 * 4 * 20_000**2, f"peak {small / 2**20:.1f} MiB at 20k"  # 5% of N x N float32
