import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import EllipseCollection
from spatialdata import SpatialData

import storm_sc as st

from ._snapshot import assert_unchanged, snapshot


def _measured(sdata, gene: str) -> np.ndarray:
    """The measured expression on the model's scale, computed independently of the plotting code."""
    table = sdata["table"]
    x = st.pp.normalize_expression(table)
    x = x.toarray() if hasattr(x, "toarray") else x
    return x[:, table.var_names.get_loc(gene)]


def _values(ax) -> np.ndarray:
    (coll,) = [c for c in ax.collections if isinstance(c, EllipseCollection)]
    return np.asarray(coll.get_array())


def _copy_with_tables(sdata, **tables) -> SpatialData:
    out = SpatialData(images=dict(sdata.images), shapes=dict(sdata.shapes), tables=tables)
    out.attrs.update(sdata.attrs)
    return out


def test_expression_measured_predicted_uncertainty(sdata, tmp_path):
    before = snapshot(sdata)
    pred = sdata.tables["storm_predicted"]
    genes = ["gene_0002", "GENE_0003"]  # case-insensitive
    fig = st.pl.expression(sdata, genes, uncertainty=True, save=tmp_path / "expr.pdf", show=False)
    assert (tmp_path / "expr.pdf").stat().st_size > 0
    panels = [a for a in fig.axes if a.get_title()]  # colour bars have no title
    assert len(panels) == 6
    for row, gene in enumerate(["gene_0002", "gene_0003"]):
        measured_ax, predicted_ax, std_ax = panels[3 * row : 3 * row + 3]
        measured = _measured(sdata, gene)
        predicted = np.asarray(pred[:, gene].X).ravel()
        np.testing.assert_allclose(_values(measured_ax), measured, rtol=1e-5)
        np.testing.assert_allclose(_values(predicted_ax), predicted, rtol=1e-6)
        np.testing.assert_allclose(_values(std_ax), np.asarray(pred[:, gene].layers["predicted_std"]).ravel())
        r = np.corrcoef(measured, predicted)[0, 1]
        assert predicted_ax.get_title() == f"{gene}: predicted (r = {r:.2f})"
        assert measured_ax.get_title() == f"{gene}: measured"
        # one colour scale for measurement and prediction, so that they compare directly
        clims = [
            next(c for c in a.collections if isinstance(c, EllipseCollection)).get_clim()
            for a in panels[3 * row : 3 * row + 2]
        ]
        assert clims[0] == clims[1]
        std = np.asarray(pred[:, gene].layers["predicted_std"]).ravel()
        std_clim = next(c for c in std_ax.collections if isinstance(c, EllipseCollection)).get_clim()
        assert std_clim == (0.0, std.max())  # an s.d. reads from zero
        constant = np.ptp(std) <= 1e-6 * std.max()  # the readout's s.d. is one number per gene
        assert std_ax.get_title() == f"{gene}: predicted s.d." + (" (the same everywhere)" if constant else "")
    assert_unchanged(before, sdata)


def _scanpy_visium(sdata):
    """The toy slide in scanpy's Visium layout: .obsm["spatial"] in full-res pixels, the image in .uns."""
    table = sdata["table"]
    slide = st.io.resolve(sdata, table_key="table")
    adata = table.copy()
    adata.obsm["spatial"] = slide.centers_px
    image = np.moveaxis(np.asarray(slide.image.data.compute()), 0, -1)
    # 65 um is Space Ranger's theoretical spot: 32.5 full-resolution pixels make 2 um per pixel, as in the toy
    adata.uns["spatial"] = {
        "toy": {"images": {"hires": image}, "scalefactors": {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": 32.5}}
    }
    return adata, slide


def test_expression_on_anndata_with_predicted(sdata):
    pred = sdata.tables["storm_predicted"]
    adata, slide = _scanpy_visium(sdata)
    before = snapshot(adata)
    with pytest.raises(ValueError, match="pass `predicted=`"):
        st.pl.expression(adata, "gene_0002")
    fig = st.pl.expression(adata, "gene_0002", predicted=pred, show=False)
    measured_ax = fig.axes[0]
    (coll,) = [c for c in measured_ax.collections if isinstance(c, EllipseCollection)]
    np.testing.assert_allclose(coll.get_offsets(), slide.centers_um)
    np.testing.assert_allclose(_values(measured_ax), _measured(sdata, "gene_0002"), rtol=1e-5)
    # the correlations need no positions at all
    positions_free = sdata["table"].copy()
    table = st.pl.gene_correlations(positions_free, predicted=pred)
    assert table.shape[0] == pred.n_vars
    assert_unchanged(before, adata)


def test_expression_rows_follow_the_measured_table(sdata):
    pred = sdata.tables["storm_predicted"]
    shuffled = pred[np.random.default_rng(0).permutation(pred.n_obs)].copy()
    other = _copy_with_tables(sdata, table=sdata["table"], storm_predicted=shuffled)
    fig = st.pl.expression(other, "gene_0010", image=False, share_scale=False, show=False)
    predicted_ax = [a for a in fig.axes if a.get_title().startswith("gene_0010: predicted")][0]
    np.testing.assert_allclose(_values(predicted_ax), np.asarray(pred[:, "gene_0010"].X).ravel(), rtol=1e-6)


def test_expression_errors(sdata):
    with pytest.raises(KeyError, match=r"\['NOT_A_GENE'\].*predict_expression"):
        st.pl.expression(sdata, ["gene_0002", "NOT_A_GENE"])
    with pytest.raises(ValueError, match="gene name"):
        st.pl.expression(sdata, [])
    asked_outside = sdata.tables["storm_predicted"].copy()
    asked_outside.uns["storm"]["genes_not_in_model"] = ["NOT_A_GENE"]  # as predict_expression records it
    with pytest.raises(KeyError, match=r"\['NOT_A_GENE'\] were requested .* not in the model's vocabulary"):
        st.pl.expression(_copy_with_tables(sdata, table=sdata["table"], storm_predicted=asked_outside), "NOT_A_GENE")
    with pytest.raises(ValueError, match="colormap"):
        st.pl.expression(sdata, "gene_0002", cmap="no_such_map")
    no_prediction = _copy_with_tables(sdata, table=sdata["table"])
    with pytest.raises(KeyError, match=r"predict_expression\(sdata, model"):
        st.pl.expression(no_prediction, "gene_0002")
    no_std = sdata.tables["storm_predicted"].copy()
    del no_std.layers["predicted_std"]
    with pytest.raises(KeyError, match="predicted_std"):
        st.pl.expression(
            _copy_with_tables(sdata, table=sdata["table"], storm_predicted=no_std), "gene_0002", uncertainty=True
        )
    other_slide = sdata.tables["storm_predicted"].copy()
    other_slide.obs_names = [f"x{i}" for i in range(other_slide.n_obs)]
    with pytest.raises(ValueError, match="another slide"):
        st.pl.expression(_copy_with_tables(sdata, table=sdata["table"], storm_predicted=other_slide), "gene_0002")
    with pytest.raises(TypeError, match="one slide per call"):
        st.pl.expression([sdata, sdata], "gene_0002")
    with pytest.raises(KeyError, match="layer"):
        st.pl.expression(sdata, "gene_0002", layer="counts")


def test_gene_correlations_match_numpy(sdata):
    before = snapshot(sdata)
    pred = sdata.tables["storm_predicted"]
    table = st.pl.gene_correlations(sdata)
    assert sorted(table.index) == sorted(pred.var_names)
    assert table["pearson_r"].is_monotonic_decreasing
    for gene in pred.var_names:
        r = np.corrcoef(_measured(sdata, gene), np.asarray(pred[:, gene].X).ravel())[0, 1]
        assert table.loc[gene, "pearson_r"] == pytest.approx(r, abs=1e-6)
    assert (table["n_obs"] == sdata["table"].n_obs).all()
    assert_unchanged(before, sdata)
    # the measurement's own scale does not matter: log1p-normalised input gives the same correlations
    logged = sdata["table"].copy()
    logged.X = st.pp.normalize_expression(logged)
    same = st.pl.gene_correlations(_copy_with_tables(sdata, table=logged, storm_predicted=pred))
    pd.testing.assert_series_equal(same["pearson_r"], table["pearson_r"], atol=1e-5)


def test_gene_correlations_leave_out_unmeasured_genes(sdata):
    pred = sdata.tables["storm_predicted"].copy()
    pred.var_names = ["gene_0002", "gene_0003", "gene_0010", "NOT_MEASURED"]
    table = st.pl.gene_correlations(sdata, predicted=pred)
    assert "NOT_MEASURED" not in table.index
    assert len(table) == 3
    only_unmeasured = pred[:, ["NOT_MEASURED"]]
    with pytest.raises(ValueError, match="not measured|None of the"):
        st.pl.gene_correlations(sdata, predicted=only_unmeasured)


def test_gene_correlation_plot(sdata, tmp_path):
    table = st.pl.gene_correlations(sdata)
    fig = st.pl.gene_correlation(sdata, top=3, save=tmp_path / "corr.svg", show=False)
    assert (tmp_path / "corr.svg").read_text().startswith("<?xml")
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_yticklabels()] == table.index[:3].tolist()
    np.testing.assert_allclose(ax.collections[-1].get_offsets()[:, 0], table["pearson_r"].iloc[:3])
    assert ax.get_title() == "toy: top 3 of 4 genes"  # the slide named: figures saved in a loop stay told apart
    fig = st.pl.gene_correlation(sdata, top=None, genes=["gene_0010", "gene_0002"], show=False)
    assert len(fig.axes[0].get_yticklabels()) == 2
    with pytest.raises(ValueError, match="`top`"):
        st.pl.gene_correlation(sdata, top=0)


def test_measured_table_found_beside_several_prediction_tables(sdata):
    # Predictions stored under other key_added values annotate the same spots: still not the measured table.
    pred = sdata.tables["storm_predicted"]
    several = _copy_with_tables(sdata, table=sdata["table"], p1=pred.copy(), p2=pred.copy())
    fig = st.pl.expression(several, "gene_0002", predicted_key="p1", show=False)
    assert [a.get_title() for a in fig.axes if a.get_title()][:1] == ["gene_0002: measured"]
    st.pl.domains(several)
    assert st.pl.gene_correlations(several, predicted_key="p2").index.tolist()


def test_genes_are_found_without_a_multi_genome_prefix():
    from storm_sc.pl._slides import pick_genes

    available = pd.Index(["GRCh38__SFTPC", "GRCh38__ACTB", "mm10___Actb", "Gapdh"])
    assert pick_genes(["sftpc", "GAPDH"], available, what="t", hint="") == ["GRCh38__SFTPC", "Gapdh"]
    assert pick_genes("GRCh38__ACTB", available, what="t", hint="") == ["GRCh38__ACTB"]
    with pytest.raises(KeyError, match="ambiguous.*GRCh38__ACTB.*mm10___Actb"):
        pick_genes("ACTB", available, what="t", hint="")
    with pytest.raises(KeyError, match=r"\['EPCAM'\] not in t"):
        pick_genes(["SFTPC", "EPCAM"], available, what="t", hint="")
