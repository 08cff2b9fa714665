"""st.datasets.toy: planted domains that link morphology and expression, deterministic for a seed."""

from __future__ import annotations

import numpy as np
import pytest

import storm_sc as st
from storm_sc._constants import ATTRS_STORM


@pytest.fixture(scope="module")
def slide():
    return st.datasets.toy(n_obs=400, n_genes=80, n_domains=4, seed=3)


def _centers(sdata):
    shapes = sdata.shapes["toy_spots"]
    return np.column_stack([shapes.geometry.x, shapes.geometry.y])


def _patch_features(sdata, half: int = 12) -> np.ndarray:
    """Mean colour and darkness spread of the image square around each spot."""
    image = np.asarray(sdata.images["toy_image"].values, dtype=np.float64)
    _, h, w = image.shape
    feats = []
    for x, y in np.rint(_centers(sdata)).astype(int):
        patch = image[:, max(y - half, 0) : min(y + half, h), max(x - half, 0) : min(x + half, w)]
        grey = patch.mean(axis=0)
        feats.append([*patch.mean(axis=(1, 2)), grey.std(), (grey < 150).mean() * 100])
    return np.asarray(feats)


def test_shapes_labels_and_scale(slide):
    table = slide.tables["table"]
    assert table.shape == (400, 80)
    domains = table.obs["true_domain"]
    assert list(domains.cat.categories) == ["D0", "D1", "D2", "D3"]
    assert domains.value_counts().min() >= 20
    attrs = slide.attrs[ATTRS_STORM]
    assert attrs["mpp"] == 2.0
    assert attrs["image_key"] == "toy_image"
    assert attrs["spot_diameter_um"] == 55.0
    assert slide.images["toy_image"].dtype == np.uint8
    x = table.X.toarray()
    assert (x >= 0).all()
    assert np.array_equal(x, np.round(x))
    # the image covers every spot
    _, h, w = slide.images["toy_image"].shape
    xy = _centers(slide)
    assert (xy >= 0).all()
    assert (xy[:, 0] < w).all()
    assert (xy[:, 1] < h).all()


def test_deterministic_for_a_seed():
    a = st.datasets.toy(n_obs=150, n_genes=30, n_domains=3, seed=7)
    b = st.datasets.toy(n_obs=150, n_genes=30, n_domains=3, seed=7)
    c = st.datasets.toy(n_obs=150, n_genes=30, n_domains=3, seed=8)
    assert np.array_equal(a.tables["table"].X.toarray(), b.tables["table"].X.toarray())
    assert np.array_equal(a.images["toy_image"].values, b.images["toy_image"].values)
    assert np.array_equal(_centers(a), _centers(b))
    assert not np.array_equal(a.tables["table"].X.toarray(), c.tables["table"].X.toarray())
    # the image is optional and does not change the expression or the domains
    d = st.datasets.toy(n_obs=150, n_genes=30, n_domains=3, seed=7, image=False)
    assert not d.images
    assert np.array_equal(a.tables["table"].X.toarray(), d.tables["table"].X.toarray())
    assert a.tables["table"].obs["true_domain"].equals(d.tables["table"].obs["true_domain"])


def test_marker_genes_are_up_in_their_domain(slide):
    table = slide.tables["table"]
    x = table.X.toarray()
    domains = table.obs["true_domain"].to_numpy()
    markers = table.var["marker_of"].to_numpy()
    assert (markers != "").sum() >= 4
    for d in np.unique(domains):
        genes = markers == d
        assert genes.any()
        inside = x[domains == d][:, genes].mean()
        outside = x[domains != d][:, genes].mean()
        assert inside > 2.5 * outside, d


def test_morphology_predicts_the_domain(slide):
    """Nearest-centroid on patch colour statistics recovers the planted domain: morphology carries the label."""
    feats = _patch_features(slide)
    feats = (feats - feats.mean(0)) / feats.std(0)
    domains = slide.tables["table"].obs["true_domain"].to_numpy()
    rng = np.random.default_rng(0)
    train = rng.random(len(domains)) < 0.5
    labels = np.unique(domains)
    centroids = np.stack([feats[train & (domains == d)].mean(0) for d in labels])
    predicted = labels[np.argmin(((feats[~train, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    assert (predicted == domains[~train]).mean() > 0.85


def test_domains_are_spatially_coherent(slide):
    xy = _centers(slide)
    domains = slide.tables["table"].obs["true_domain"].to_numpy()
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.argsort(d, axis=1)[:, :4]
    assert (domains[nearest] == domains[:, None]).mean() > 0.8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_obs": 5, "n_domains": 3}, "n_obs"),
        ({"n_domains": 0}, "n_domains"),
        ({"n_genes": 0}, "n_genes"),
        ({"mpp": -1.0}, "mpp"),
        ({"pitch_um": 0.0}, "pitch_um"),
        ({"n_obs": 10.5}, "n_obs"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        st.datasets.toy(**kwargs)
