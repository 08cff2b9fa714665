import numpy as np
import pytest
from scipy import sparse
from scipy.spatial.distance import cdist

from storm_sc.models import StormInputs, get_config
from storm_sc.models._neighbors import niche_neighbors, pick, region_neighbors
from storm_sc.models._tokens import draw_weights, gene_tokens


def test_small_panel_gives_every_measured_gene():
    x = sparse.csr_matrix(np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=np.float32))
    ids, values, valid = gene_tokens(x, np.array([10, 20, 30]), np.array([0, -1, 1]), 5)
    assert ids.shape == (3, 5)
    assert ids[0, :3].tolist() == [10, 20, 30]
    assert values[0, :3].tolist() == [0.0, 2.0, 1.0]
    assert valid.sum(1).tolist() == [3, 0, 3]


def test_large_panel_takes_top_half_then_random_measured_genes(rng):
    n_panel, budget = 500, 40
    dense = np.zeros((1, n_panel), dtype=np.float32)
    expressed = rng.choice(n_panel, 60, replace=False)
    dense[0, expressed] = rng.uniform(0.5, 5.0, 60).astype(np.float32)
    x = sparse.csr_matrix(dense)
    gene_index = np.arange(n_panel) + 1000
    ids, values, valid = gene_tokens(x, gene_index, np.array([0]), budget, rng=np.random.default_rng(1))
    assert valid.all()
    assert len(set(ids[0].tolist())) == budget
    top = np.argsort(-dense[0])[: budget // 2] + 1000
    assert set(top.tolist()) <= set(ids[0].tolist())
    # every token's value is the measured one (zeros included)
    np.testing.assert_array_equal(values[0], dense[0, ids[0] - 1000])
    # inference draws depend only on the row: identical twice
    a = gene_tokens(x, gene_index, np.array([0]), budget)
    b = gene_tokens(x, gene_index, np.array([0]), budget)
    np.testing.assert_array_equal(a[0], b[0])


def test_random_tokens_favour_genes_that_vary_on_the_slide(rng):
    n_obs, n_panel, budget = 200, 2000, 32
    dense = np.zeros((n_obs, n_panel), dtype=np.float32)
    dense[:, :20] = 3.0  # highly expressed everywhere: the top half of every row's tokens
    variable = np.arange(20, 70)
    dense[:, variable] = rng.poisson(0.3, (n_obs, len(variable)))  # vary across observations
    x = sparse.csr_matrix(dense)
    weights = draw_weights(x)
    assert weights.sum() == pytest.approx(1.0) and (weights > 0).all()
    assert weights[variable].min() > 10 * weights[100]
    ids, _, _ = gene_tokens(x, np.arange(n_panel), np.arange(n_obs), budget, weights=weights)
    drawn = ids[:, budget // 2 :]  # the random half of each row
    # 50 of 2000 panel genes vary: uniform draws would pick them 2.5% of the time
    assert np.isin(drawn, variable).mean() > 0.5
    uniform, _, _ = gene_tokens(x, np.arange(n_panel), np.arange(n_obs), budget)
    assert np.isin(uniform[:, budget // 2 :], variable).mean() < 0.1


def test_niche_neighbours_match_brute_force(rng):
    xy = rng.uniform(0, 1000, (80, 2))
    nn = niche_neighbors(xy, 6)
    d = cdist(xy, xy)
    np.fill_diagonal(d, np.inf)
    expected = np.argsort(d, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(np.sort(nn, axis=1), np.sort(expected, axis=1))
    assert niche_neighbors(xy[:3], 6)[0].tolist() == [1, 2, -1, -1, -1, -1]


def test_neighbours_tied_on_a_grid_do_not_follow_float_rounding():
    # A hexagonal grid in microns, and the same grid as another reader computes it (pixels scaled in another
    # order): positions differ by ~1e-12 um, which must not decide the order among equidistant neighbours.
    col, row = np.meshgrid(np.arange(30), np.arange(20))
    grid = np.c_[(col + 0.5 * (row % 2)).ravel() * 100.0, row.ravel() * 100.0 * np.sqrt(3) / 2]
    other = (grid / 0.1723) * 0.1723 * (1 + 1e-13)
    assert not np.array_equal(grid, other)
    np.testing.assert_array_equal(niche_neighbors(other, 6), niche_neighbors(grid, 6))
    np.testing.assert_array_equal(niche_neighbors(other, 3), niche_neighbors(grid, 3))  # cuts through the ring
    np.testing.assert_array_equal(region_neighbors(other, 400.0, 6), region_neighbors(grid, 400.0, 6))


def test_thinned_region_pools_do_not_depend_on_the_row_order(rng):
    # dense cells (~1,000 per region, over 8 x pool): pools are drawn from a thinned subset, which must be chosen
    # by position; drawn by row, shuffling the table changed every cell's region embedding
    xy = rng.uniform(0, 300, (3_000, 2))
    pool = region_neighbors(xy, 100.0, 16)
    perm = rng.permutation(len(xy))
    shuffled = region_neighbors(xy[perm], 100.0, 16)
    np.testing.assert_array_equal(np.where(shuffled >= 0, perm[shuffled], -1), pool[perm])


def test_region_neighbours_cover_the_radius_sparsely(rng):
    xy = rng.uniform(0, 500, (300, 2))
    pool = region_neighbors(xy, 150.0, 10)
    assert pool.shape == (300, 10)
    d = cdist(xy, xy)
    for i in range(0, 300, 37):
        members = pool[i][pool[i] >= 0]
        assert i not in members
        assert (d[i, members] <= 150.0).all()
        inside = (d[i] <= 150.0).sum() - 1
        assert len(members) == min(10, inside)
        if inside > 10:  # spread from near to far, not just the 10 nearest
            assert d[i, members].max() > np.sort(d[i])[11]
    assert pick(pool[0], 4, None).tolist() == pick(pool[0], 4, None).tolist()
    drawn = pick(pool[0], 4, np.random.default_rng(0))
    assert set(drawn.tolist()) <= set(pool[0].tolist())


def test_storm_inputs_validation():
    cfg = get_config("storm-tiny")
    xy = np.random.default_rng(0).uniform(0, 500, (20, 2))
    x = np.random.default_rng(0).poisson(1, (20, 7)).astype(np.float32)
    inputs = StormInputs.from_arrays(xy, config=cfg, expression=x, gene_index=np.arange(7))
    assert inputs.has_expression
    assert not inputs.has_image
    assert inputs.niche_neighbors.shape == (20, cfg.niche_k)
    with pytest.raises(ValueError, match="go together"):
        StormInputs.from_arrays(xy, config=cfg, expression=x)
    with pytest.raises(ValueError, match="uint8"):
        StormInputs.from_arrays(xy, config=cfg, patches=np.zeros((20, 3, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match="one vocabulary index per expression column"):
        StormInputs.from_arrays(xy, config=cfg, expression=x, gene_index=np.arange(6))


def _successive_sampling_frequencies(weights, excluded, size, n_rep, rng):
    """How often each gene is among ``size`` drawn by numpy's weighted choice without replacement, top genes aside."""
    counts = np.zeros(len(weights))
    keep = np.setdiff1d(np.arange(len(weights)), excluded)
    p = weights[keep] / weights[keep].sum()
    for _ in range(n_rep):
        counts[keep[rng.choice(len(keep), size=size, replace=False, p=p)]] += 1
    return counts / n_rep


@pytest.mark.parametrize("concentrated", [False, True])
def test_random_tokens_follow_weighted_sampling_without_replacement(concentrated):
    # one row repeated: 3 expressed genes are its top tokens, the other 5 slots are drawn from the 9 others
    n_panel, budget, n_rep = 12, 8, 4000
    dense = np.zeros((n_rep, n_panel), dtype=np.float32)
    dense[:, [2, 5, 7]] = [3.0, 2.0, 1.0]
    x = sparse.csr_matrix(dense)
    weights = np.linspace(1.0, 4.0, n_panel)
    if concentrated:  # nearly all the weight on the top genes: most candidates are rejected, the exact path finishes
        weights[[2, 5, 7]] = 1e7
    weights /= weights.sum()
    ids, values, valid = gene_tokens(x, np.arange(n_panel), np.arange(n_rep), budget, rng=np.random.default_rng(3))
    assert valid.all() and (ids[:, :3] == [2, 5, 7]).all()
    ids, _, _ = gene_tokens(
        x, np.arange(n_panel), np.arange(n_rep), budget, rng=np.random.default_rng(3), weights=weights
    )
    assert all(len(set(row)) == budget for row in ids.tolist())
    assert (ids[:, :3] == [2, 5, 7]).all()
    observed = np.bincount(ids[:, 3:].ravel(), minlength=n_panel) / n_rep
    expected = _successive_sampling_frequencies(weights, [2, 5, 7], budget - 3, n_rep, np.random.default_rng(4))
    np.testing.assert_allclose(observed, expected, atol=0.04)
    assert observed[[2, 5, 7]].sum() == 0


def test_inference_draws_are_the_same_in_any_batch_and_differ_between_draws(rng):
    n_obs, n_panel, budget = 300, 400, 32
    x = sparse.random(n_obs, n_panel, density=0.2, format="csr", random_state=2, dtype=np.float32)
    weights = draw_weights(x)
    rows = np.arange(n_obs)
    whole = gene_tokens(x, np.arange(n_panel), rows, budget, weights=weights)
    shuffled = rng.permutation(n_obs)
    parts = [gene_tokens(x, np.arange(n_panel), part, budget, weights=weights) for part in np.array_split(shuffled, 7)]
    ids = np.concatenate([p[0] for p in parts])
    np.testing.assert_array_equal(ids[np.argsort(shuffled)], whole[0])
    # the same rows stored as float64 with an explicit zero get the same tokens
    dense = x[:5].toarray().astype(np.float64)
    empty_col = int(np.flatnonzero(dense[0] == 0)[0])
    coo = sparse.coo_matrix(dense)
    stored = sparse.csr_matrix(
        (np.r_[coo.data, 0.0], (np.r_[coo.row, 0], np.r_[coo.col, empty_col])), shape=dense.shape
    )
    assert stored.nnz == coo.nnz + 1
    again = gene_tokens(stored, np.arange(n_panel), np.arange(5), budget, weights=weights)
    np.testing.assert_array_equal(again[0], whole[0][:5])
    second = gene_tokens(x, np.arange(n_panel), rows, budget, weights=weights, draw=1)
    np.testing.assert_array_equal(second[0][:, : budget // 2], whole[0][:, : budget // 2])  # the top genes stay
    assert (second[0][:, budget // 2 :] != whole[0][:, budget // 2 :]).any(axis=1).mean() > 0.9


@pytest.mark.parametrize("budget", [1, 3, 600])
def test_token_budgets_from_one_to_most_of_the_panel(budget):
    # a budget of one has no top half; a budget near the panel size needs more candidates than the default
    # minimum (most of the panel must be drawn), which the per-row candidate limit scales up for
    n_panel = 700
    x = sparse.random(40, n_panel, density=0.05, format="csr", random_state=4, dtype=np.float32)
    x = sparse.csr_matrix(sparse.diags(np.r_[0.0, np.ones(39)]).astype(np.float32) @ x)  # row 0 empty: all drawn
    x.eliminate_zeros()
    assert x[0].nnz == 0
    weights = draw_weights(x)
    for rng in (None, np.random.default_rng(0)):
        ids, values, valid = gene_tokens(x, np.arange(n_panel), np.arange(40), budget, weights=weights, rng=rng)
        assert valid.all() and all(len(set(row)) == budget for row in ids.tolist())
        np.testing.assert_array_equal(values, np.take_along_axis(x.toarray(), ids, 1))
