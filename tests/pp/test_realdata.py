"""pp on real public data from ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import numpy as np
import pytest

import storm_sc as st
from tests._paths import real_data

pytestmark = pytest.mark.realdata

_SECTION = ("visium_ffpe_villacampa2021", "mousebrain", "V10F24-078_A1")


@pytest.fixture(scope="module")
def visium_brain():
    spatialdata_io = pytest.importorskip("spatialdata_io")
    path = real_data(*_SECTION)
    sdata = spatialdata_io.visium(path, dataset_id=_SECTION[-1])
    return sdata, st.io.resolve(sdata)


def _read_10x(*parts: str):
    import scanpy as sc

    adata = sc.read_10x_h5(real_data(*parts))
    adata.var_names_make_unique()
    return adata


def _vocabulary(adata) -> st.pp.GeneVocabulary:
    return st.pp.GeneVocabulary.from_genes(adata.var_names, ensembl_ids=adata.var["gene_ids"])


def test_visium_patches_show_tissue(visium_brain):
    _, si = visium_brain
    ds = st.pp.patch_dataset(si)
    assert len(ds) == si.n_obs
    rows = np.linspace(0, len(ds) - 1, 120).astype(int)
    patches = ds.read(rows)
    assert patches.shape == (120, 3, 224, 224)
    assert patches.dtype == np.uint8
    # the glass around the section: the outer 5% of the slide image
    level = np.asarray(si.image.data[:, :, :].compute()).mean(axis=0)
    border = max(1, int(0.05 * min(level.shape)))
    glass = np.median(np.concatenate([level[:border].ravel(), level[-border:].ravel()]))
    brightness = patches.reshape(len(rows), -1).mean(axis=1)
    # the table holds in-tissue spots only: stained tissue is much darker than glass
    assert np.median(brightness) < glass - 30
    assert np.mean(brightness < glass - 15) > 0.9


def test_visium_hex_grid_graph(visium_brain):
    sdata, si = visium_brain
    g = st.pp.spatial_graph(sdata)
    np.testing.assert_array_equal(g.getnnz(axis=1), 6)
    pitch = np.median(g.data)
    assert pitch == pytest.approx(100.0, rel=0.03)  # Visium spots sit 100 um apart
    # nearest neighbours of a hexagonal grid are all one pitch away
    assert np.mean(np.abs(g.data / pitch - 1) < 0.03) > 0.9
    ring = st.pp.spatial_graph(si, radius_um=1.1 * pitch)
    degree = ring.getnnz(axis=1)
    assert np.median(degree) == 6
    assert degree.max() == 6


def test_align_real_panels():
    xenium = _read_10x("xenium_mouse_brain", "cell_feature_matrix.h5")  # mouse, 248 genes, symbols + ids
    brain = _read_10x(*_SECTION, "filtered_feature_bc_matrix.h5")  # mouse, whole transcriptome
    organoid = _read_10x("visium_ffpe_villacampa2021", "lungorganoid", "V19D02-088_A1", "filtered_feature_bc_matrix.h5")
    dlpfc = _read_10x("dlpfc_151675", "filtered_feature_bc_matrix.h5")  # human, Ensembl ids only

    # same species: every Xenium gene is found, by Ensembl id
    aligned = st.pp.align_genes(xenium, _vocabulary(brain))
    assert aligned.n_matched == len(set(xenium.var["gene_ids"]) & set(brain.var["gene_ids"])) == 248
    assert aligned.X.shape == (xenium.n_obs, 248)

    # mouse panel on a human vocabulary: Ensembl ids differ, case-insensitive symbols carry the orthologues
    human = _vocabulary(organoid)
    aligned = st.pp.align_genes(xenium, human)
    shared = {g.casefold() for g in xenium.var_names} & {g.casefold() for g in organoid.var_names}
    assert aligned.n_matched == len(shared) > 200
    assert human.symbols[aligned.vocab_indices[0]].casefold() in shared

    # human table keyed by Ensembl ids only
    aligned = st.pp.align_genes(dlpfc, human)
    assert aligned.n_matched == len(set(dlpfc.var_names) & set(organoid.var["gene_ids"])) == dlpfc.n_vars
    assert aligned.mask.sum() == dlpfc.n_vars
    assert np.isfinite(aligned.X.data).all()

    # Ensembl ids on one side, mouse symbols on the other: nothing in common, said clearly
    with pytest.raises(ValueError, match="No gene in common.*species"):
        st.pp.align_genes(dlpfc, _vocabulary(xenium))


def test_align_multi_genome_reference():
    # GRCh38 + SARS-CoV-2 reference: genes are named "GRCh38__GAPDH", "wuhCor1_N"
    infected = _read_10x(
        "visium_ffpe_villacampa2021", "lung_SARS-CoV-2", "V10F24-110_C1", "filtered_feature_bc_matrix.h5"
    )
    organoid = _read_10x("visium_ffpe_villacampa2021", "lungorganoid", "V19D02-088_A1", "filtered_feature_bc_matrix.h5")
    aligned = st.pp.align_genes(infected, _vocabulary(organoid))
    human = (infected.var["genome"] == "GRCh38").to_numpy()
    assert aligned.n_matched == len(organoid.var_names) == human.sum()
    assert human[aligned.data_indices].all()  # the viral genes are not in the vocabulary
