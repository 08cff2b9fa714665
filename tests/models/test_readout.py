"""The expression readout: closed-form ridge from H&E-only embeddings to expression, stored with the weights."""

from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData
from scipy import sparse

import storm_sc as st
from storm_sc.models import ExpressionReadout
from storm_sc.models._inference import image_features
from storm_sc.models._readout import LEVELS_INPUT, READOUT_INPUTS, ReadoutSlide, fit_readout
from storm_sc.training._slides import as_slides, slide_inputs


def _planted_slides(n_slides=3, n=200, f=12, g=30, noise=0.3, seed=0):
    """Slides whose expression is a known linear function of the features, plus noise, on a shared gene index."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(f, g))
    slides = []
    for i in range(n_slides):
        x = rng.normal(size=(n, f))
        y = np.clip(x @ w / np.sqrt(f) + 2.0 + noise * rng.normal(size=(n, g)), 0, None)
        slides.append(ReadoutSlide(f"s{i}", x.astype(np.float32), sparse.csr_matrix(y.astype(np.float32)),
                                   np.arange(g), rng.uniform(0, 1000, n)))  # fmt: skip
    return slides, w


def test_fit_readout_recovers_a_planted_linear_map():
    slides, _ = _planted_slides()
    readout = fit_readout(slides, 30, min_detection=0.0)
    assert readout.n_genes == 30 and readout.slides == ["s0", "s1", "s2"]
    assert np.nanmean(readout.cv_pearson) > 0.9
    # New data from the same map is predicted well, with the cross-validated residual sd as the uncertainty.
    test, _ = _planted_slides(n_slides=1, seed=0)
    x, y = test[0].features, test[0].expression.toarray()
    pred = readout.predict(x)
    r = [np.corrcoef(pred[:, j], y[:, j])[0, 1] for j in range(30)]
    assert np.mean(r) > 0.9
    assert np.all(readout.residual_sd > 0) and np.all(readout.residual_sd < 1.0)
    assert np.all(pred >= 0)


def test_noise_alone_gives_no_cross_validated_signal():
    rng = np.random.default_rng(1)
    slides = [ReadoutSlide(f"s{i}", rng.normal(size=(150, 10)).astype(np.float32),
                           sparse.csr_matrix(rng.gamma(2.0, size=(150, 20)).astype(np.float32)), np.arange(20),
                           rng.uniform(size=150)) for i in range(3)]  # fmt: skip
    readout = fit_readout(slides, 20, min_detection=0.0)
    assert abs(np.nanmean(readout.cv_pearson)) < 0.1


def test_genes_measured_on_some_slides_are_fitted_on_those_slides_only():
    slides, _ = _planted_slides(n_slides=3, g=30)
    # Slide 2 measures only the first 10 genes: genes 10-29 come from slides 0 and 1 alone.
    s2 = slides[2]
    slides[2] = ReadoutSlide("s2", s2.features, s2.expression[:, :10].tocsr(), np.arange(10), s2.x_um)
    readout = fit_readout(slides, 40, min_detection=0.0)
    assert sorted(readout.gene_ids.tolist()) == list(range(30))  # 30-39 are measured nowhere: not fitted
    assert np.nanmean(readout.cv_pearson) > 0.85
    with pytest.raises(ValueError, match="measured on none"):
        fit_readout(slides, 40, genes=np.array([35]))


def test_a_single_slide_is_cross_validated_by_spatial_stripes_and_rare_genes_are_left_out():
    slides, _ = _planted_slides(n_slides=1, g=10)
    y = slides[0].expression.toarray()
    y[:, 0] = 0.0
    y[:3, 0] = 1.0  # detected in 1.5% of spots
    slides[0] = ReadoutSlide("one", slides[0].features, sparse.csr_matrix(y), np.arange(10), slides[0].x_um)
    readout = fit_readout(slides, 10)  # default min_detection = 5%
    assert 0 not in readout.gene_ids and readout.n_genes == 9
    assert np.nanmean(readout.cv_pearson) > 0.85


def _feature_slide(seed, n=240, genes=("A", "B", "C", "D", "E", "F")):
    """A slide with precomputed patch features whose first columns drive the expression (a planted signal)."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    mix = np.random.default_rng(99).normal(size=(8, len(genes)))
    lam = np.exp(np.clip(feats @ mix / 2.0, -3, 3)) * 5.0
    counts = rng.poisson(lam).astype(np.float32)
    xy = np.stack(np.meshgrid(np.arange(20), np.arange(-(-n // 20))), -1).reshape(-1, 2)[:n] * 100.0
    adata = AnnData(counts, obsm={"spatial": xy, "X_feat": feats})
    adata.var_names = list(genes)
    adata.obs_names = [f"o{seed}_{i}" for i in range(n)]
    return st.io.resolve(adata, mpp=1.0)


@pytest.fixture(scope="module")
def feature_model():
    cfg = st.models.get_config("storm-tiny", morphology="features", feature_dim=8, features_key="X_feat")
    return st.models.StormModel(cfg, ["A", "B", "C", "D", "E", "F", "G"], seed=0)


def test_model_readout_predicts_planted_expression_and_round_trips(feature_model, tmp_path):
    train = {"a": _feature_slide(0), "b": _feature_slide(1), "c": _feature_slide(2)}
    test = _feature_slide(3)
    model = feature_model
    assert model.readout is None
    model.fit_expression_readout(train, verbose=False)
    assert isinstance(model.readout, ExpressionReadout)
    assert model.readout.slides == ["a", "b", "c"]
    assert set(np.asarray(model.vocabulary.symbols)[model.readout.gene_ids]) == set("ABCDEF")  # G is never measured

    pred = model.predict_expression(test, verbose=False)  # by default, the readout's genes
    assert pred.genes == list("ABCDEF") and pred.sources == ["readout"] * 6
    everything = model.predict_expression(test, genes=list("ABCDEFG"), verbose=False)
    assert everything.sources == ["readout"] * 6 + ["head"]
    np.testing.assert_array_equal(everything.mean[:, :6], pred.mean)
    truth = np.log1p(test.table.X / test.table.X.sum(1, keepdims=True) * 1e4)
    r = [np.corrcoef(pred.mean[:, j], truth[:, j])[0, 1] for j in range(6)]
    # The untrained network's embeddings are a random non-linear map of the features; the readout still finds it.
    assert np.mean(r) > 0.4, r
    head = model.predict_expression(test, genes=["A", "B"], source="head", verbose=False)
    assert head.sources == ["head", "head"] and not np.allclose(head.mean, pred.mean[:, :2])
    np.testing.assert_allclose(pred.std[:, :6], np.broadcast_to(model.readout.residual_sd, (test.n_obs, 6)))
    with pytest.raises(ValueError, match="not covered by the model's expression readout"):
        model.predict_expression(test, genes=["A", "G"], source="readout", verbose=False)
    with pytest.raises(ValueError, match="`source` must be"):
        model.predict_expression(test, source="ridge", verbose=False)

    path = model.save(tmp_path / "m.safetensors")
    loaded = st.models.StormModel.load(path)
    np.testing.assert_array_equal(loaded.readout.coef, model.readout.coef)
    assert loaded.readout.slides == ["a", "b", "c"]
    np.testing.assert_allclose(loaded.predict_expression(test, verbose=False).mean, pred.mean, rtol=1e-5, atol=1e-6)
    header = st.models.StormModel.inspect(path)["readout"]
    assert header["n_genes"] == 6 and header["slides"] == ["a", "b", "c"]


def test_readout_inputs_are_checked(feature_model):
    table = _feature_slide(0).table.copy()
    del table.obsm["X_feat"]
    with pytest.raises(ValueError, match="lacks H&E"):
        feature_model.fit_expression_readout([st.io.resolve(table, mpp=1.0)], verbose=False)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        feature_model.fit_expression_readout([_feature_slide(0)], genes=["ZZZ"], verbose=False)
    with pytest.raises(ValueError, match="min_detection"):
        feature_model.fit_expression_readout([_feature_slide(0)], min_detection=1.5, verbose=False)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="penalty_strata"):
            feature_model.fit_expression_readout([_feature_slide(0)], penalty_strata=bad, verbose=False)


def test_training_fits_the_readout_unless_asked_not_to():
    slides = [_feature_slide(0, n=120), _feature_slide(1, n=120)]
    cfg = st.models.get_config("storm-tiny", morphology="features", feature_dim=8, features_key="X_feat")
    on = st.training.fit(st.models.StormModel(cfg, list("ABCDEF"), seed=0), slides, max_epochs=1, verbose=False)
    assert on.readout is not None and on.manifest["readout"]["n_genes"] == on.readout.n_genes == 6
    off = st.training.fit(st.models.StormModel(cfg, list("ABCDEF"), seed=0), slides, max_epochs=1,
                          expression_readout=False, verbose=False)  # fmt: skip
    assert off.readout is None and "readout" not in off.manifest


def test_the_bundled_reference_loads_with_or_without_a_readout():
    model = st.models.StormModel.from_pretrained()
    assert model.readout is None or model.readout.gene_ids.max() < len(model.vocabulary)


@pytest.fixture(scope="module")
def toy_slide():
    # Planted domains with their own colours and marker genes: within the slide, expression follows the stain.
    # (Each generated slide draws its own domain colours, so the link does not carry across slides.)
    return st.datasets.toy(n_obs=300, n_genes=40, n_domains=3, seed=0)


def test_a_pixel_model_readout_reads_the_patches_stain_statistics(toy_slide, tmp_path):
    vocab = st.pp.GeneVocabulary.from_genes(toy_slide["table"].var_names)
    markers = np.flatnonzero(toy_slide["table"].var["marker_of"].to_numpy() != "")
    model = st.models.StormModel("storm-tiny", vocab, seed=0)
    model.fit_expression_readout([toy_slide], verbose=False)
    assert model.readout.inputs == READOUT_INPUTS
    assert model.readout.coef.shape[0] == 3 * model.config.hidden_dim + 2 * model.network.n_statistics
    assert st.models.StormModel.inspect(model.save(tmp_path / "m.safetensors"))["readout"]["inputs"] == list(
        READOUT_INPUTS
    )

    # predict_expression reads the same features as the fit.
    inputs = slide_inputs(model, as_slides([toy_slide])[0], verbose=False)
    features = image_features(model.network, inputs, readout_inputs=model.readout.inputs, verbose=False)
    pred = model.predict_expression(toy_slide, source="readout", verbose=False)
    order = np.argsort(model.readout.gene_ids)
    np.testing.assert_allclose(pred.mean, model.readout.predict(features)[:, order], rtol=1e-4, atol=1e-5)
    # The statistics, computed once for the readout and the stain path, leave the levels as they are without them.
    levels = image_features(model.network, inputs, readout_inputs=(LEVELS_INPUT,), verbose=False)
    np.testing.assert_allclose(features[:, : levels.shape[1]], levels, rtol=1e-5, atol=1e-6)

    # With an untrained network, the statistics carry more of the planted colour-expression link to held-out
    # stripes of the slide (the readout's own cross-validation) than the embedding levels alone.
    levels_only = st.models.StormModel("storm-tiny", vocab, seed=0)
    levels_only.fit_expression_readout([toy_slide], stain_statistics=False, verbose=False)
    assert levels_only.readout.inputs == (LEVELS_INPUT,)
    assert levels_only.readout.coef.shape[0] == 3 * model.config.hidden_dim

    def marker_cv(m):
        return float(np.nanmean(m.readout.cv_pearson[np.isin(m.readout.gene_ids, markers)]))

    assert marker_cv(model) > marker_cv(levels_only) + 0.03 and marker_cv(model) > 0.25

    # Both layouts survive save / load and predict the same afterwards.
    for m, name in ((model, "stats"), (levels_only, "levels")):
        loaded = st.models.StormModel.load(m.save(tmp_path / f"{name}.safetensors", overwrite=True))
        assert loaded.readout.inputs == m.readout.inputs
        np.testing.assert_allclose(
            loaded.predict_expression(toy_slide, verbose=False).mean,
            m.predict_expression(toy_slide, verbose=False).mean,
            rtol=1e-5,
            atol=1e-6,
        )


def test_readouts_stored_before_the_statistics_read_the_levels_alone():
    slides, _ = _planted_slides(n_slides=2)
    tensors = fit_readout(slides, 30, min_detection=0.0).state_dict()
    old = ExpressionReadout.pop_from(dict(tensors), {"slides": ["s0", "s1"], "levels": ["observation"]})
    assert old.inputs == (LEVELS_INPUT,) and not old.uses_stain_statistics
    new = ExpressionReadout.pop_from(dict(tensors), {"inputs": list(READOUT_INPUTS)})
    assert new.uses_stain_statistics
    with pytest.raises(ValueError, match="reads the levels first"):
        ExpressionReadout.pop_from(dict(tensors), {"inputs": ["stain_statistics"]})


def test_strongly_varying_genes_get_their_own_penalty():
    # 100 genes driven by the features (large variance) beside 100 that barely are (small variance, mostly noise).
    rng = np.random.default_rng(3)
    w = rng.normal(size=(12, 200))
    w[:, 100:] *= 0.03
    slides = []
    for i in range(3):
        x = rng.normal(size=(200, 12))
        y = x @ w / np.sqrt(12) + 3.0 + 0.3 * rng.normal(size=(200, 200))
        slides.append(ReadoutSlide(f"s{i}", x.astype(np.float32), sparse.csr_matrix(y.astype(np.float32)),
                                   np.arange(200), rng.uniform(0, 1000, 200)))  # fmt: skip
    one = fit_readout(slides, 200, min_detection=0.0, penalty_strata=1)
    strata = fit_readout(slides, 200, min_detection=0.0, penalty_strata=2)
    assert len(np.unique(one.alpha)) == 1
    strong, weak = slice(0, 100), slice(100, 200)
    assert strata.alpha[strong].max() < strata.alpha[weak].min()
    # Each stratum keeps the penalty best for it: neither loses held-out correlation against the shared one.
    for part in (strong, weak):
        assert np.nanmean(strata.cv_pearson[part]) >= np.nanmean(one.cv_pearson[part]) - 1e-6
    assert np.nanmean(strata.cv_pearson) > np.nanmean(one.cv_pearson)
    # Too few genes for the strata asked for: as many strata of at least 50 genes as there are.
    assert len(np.unique(fit_readout(slides, 200, genes=np.arange(60), penalty_strata=8).alpha)) == 1
    with pytest.raises(ValueError, match="positive integer"):
        fit_readout(slides, 200, penalty_strata=0)


def test_too_few_observations_fit_no_readout(feature_model, caplog, monkeypatch):
    # Their cross-validation folds would be empty: every uncertainty NaN ("Mean of empty slice").
    slides, _ = _planted_slides(n_slides=1, n=2)
    with pytest.raises(ValueError, match="at least 10 observations .* the slides have 2; fit it on more"):
        fit_readout(slides, 30, min_detection=0.0)
    one_column, _ = _planted_slides(n_slides=1, n=30)
    one_column[0].x_um = np.zeros(30)
    with pytest.raises(ValueError, match="share one x position"):
        fit_readout(one_column, 30, min_detection=0.0)
    tiny = _feature_slide(0, n=2)
    with pytest.raises(ValueError, match="at least 10 observations"):
        feature_model.fit_expression_readout([tiny], verbose=False)
    # training leaves the model without a readout, and says why
    cfg = feature_model.config
    with caplog.at_level("WARNING", logger="storm_sc"):
        model = st.training.fit(st.models.StormModel(cfg, list("ABCDEF"), seed=0), tiny, max_epochs=1, verbose=False)
    assert model.readout is None and "readout" not in model.manifest
    assert "expression readout was not fitted on the training slides: it needs at least 10" in caplog.text
