"""Which gene tokens represent an observation: its most expressed genes plus measured genes drawn at random."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import sparse

from storm_sc._random import GOLDEN, counter_uniforms, splitmix64
from storm_sc.pp._expression import gene_moments

# Seed of the draws at inference time, with the set of genes each observation detects (see content_seeds): its
# tokens depend only on what it measured and its slide's draw weights, so embeddings are reproducible and independent of
# batching, of the order of the table's rows and of which other rows it holds.
INFERENCE_SEED = 20_240_403
# Every measured gene keeps at least this share of the mean draw weight, however constant it is on the slide.
DRAW_FLOOR = 0.1
# Random tokens are drawn in rounds of candidates (with replacement; repeats and top genes skipped) until each row
# has its share. A row that has not found its share among this many candidates per token it needs (at least
# _MIN_CANDIDATES) is finished exactly instead: its weight sits nearly all on its own top genes. The limit depends
# on the row alone, so its tokens do not depend on the batch.
_CANDIDATES_PER_TOKEN = 8
_MIN_CANDIDATES = 768
# Entries of the (rows x longest row) arrays that rank each row's top genes: a batch is ranked in groups of rows of
# similar length within this budget, so one very long row does not pad every other one.
_RANK_BUDGET = 1 << 21
_LOW32 = np.uint64(0xFFFFFFFF)


def draw_weights(expression: sparse.csr_matrix) -> np.ndarray:
    """Probability of drawing each panel gene among an observation's random tokens: its variance on the slide.

    The random half of the tokens says which measured genes are absent or low. Drawn uniformly from a panel of
    ~18k genes they are mostly genes that are zero everywhere, which tell the model nothing, and the genes whose
    level varies across the tissue (the ones domains and predictions are about) are rarely seen. Weighting the draw
    by each gene's variance of log1p expression over the slide spends the budget on those genes; a floor of
    ``DRAW_FLOOR`` times the mean weight keeps every gene possible. Unsupervised: only the slide's expression.

    Parameters
    ----------
    expression
        ``(n_obs, n_panel)`` CSR log1p expression of one slide.

    Returns
    -------
    ``(n_panel,)`` float64 probabilities summing to 1.

    Examples
    --------
    >>> x = sparse.csr_matrix(np.array([[0.0, 2.0, 1.0], [0.0, 0.0, 1.0]], dtype=np.float32))
    >>> draw_weights(x).round(3).tolist()
    [0.03, 0.939, 0.03]
    """
    n_obs, n_panel = expression.shape
    if not n_obs or not n_panel:
        return np.full(n_panel, 1.0 / max(n_panel, 1))
    _, variance = gene_moments(expression)
    if not variance.any():
        return np.full(n_panel, 1.0 / n_panel)
    weights = variance + DRAW_FLOOR * variance.mean()
    return weights / weights.sum()


def content_seeds(block: sparse.csr_matrix) -> np.ndarray:
    """One 64-bit seed per row of a CSR block, from the set of genes the row detects (its nonzero columns) alone.

    Seeding inference draws by the row's position instead made a spot's embedding change when the table was sorted,
    subset or concatenated. The values are left out on purpose: counts normalised here and the same counts passed
    as log1p differ in their last bits, and hashing those bits gave the two inputs different draws (embeddings a
    median 6.5% apart at 4 draws). Each detected column is hashed on its own and the hashes are summed over the
    row, so the seed does not depend on how the row is stored (dtypes, explicit zeros, column order).

    Examples
    --------
    >>> x = sparse.csr_matrix(np.array([[0.0, 0.5, 0.0, 2.0], [0.0, 0.5, 0.0, 0.0]], dtype=np.float32))
    >>> rescaled = sparse.csr_matrix(np.log1p(x.toarray()).astype(np.float64))
    >>> a, b = content_seeds(x), content_seeds(rescaled)
    >>> bool(a[0] == b[0]), bool(a[0] == a[1])
    (True, False)
    """
    detected = np.asarray(block.data) != 0
    hashed = np.where(detected, splitmix64(block.indices.astype(np.uint64) ^ np.uint64(INFERENCE_SEED)), np.uint64(0))
    # per-row sums as differences of one running sum (uint64 arithmetic wraps): a hash of the row's set of columns
    running = np.concatenate([np.zeros(1, dtype=np.uint64), np.cumsum(hashed, dtype=np.uint64)])
    return splitmix64(running[block.indptr[1:]] - running[block.indptr[:-1]])


def gene_tokens(
    expression: sparse.csr_matrix,
    gene_index: np.ndarray,
    rows: np.ndarray,
    max_genes: int,
    *,
    rng: np.random.Generator | None = None,
    weights: np.ndarray | None = None,
    draw: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build padded gene tokens of several observations.

    With a panel of at most ``max_genes`` genes every measured gene is a token. Otherwise half the budget goes to
    each observation's most expressed genes (ties by column) and the rest to measured genes drawn at random
    without replacement (with probabilities ``weights``, see :func:`draw_weights`; uniform without), which are
    mostly zeros: "measured but absent" is information a panel-agnostic model must see. The batch is built with
    array operations (Python loops only over groups of rows and over the rare rows whose draw weight sits nearly all
    on their own top genes), so that several inference draws are cheap.

    Parameters
    ----------
    expression
        ``(n_obs, n_panel)`` CSR log1p expression of one slide (no repeated column within a row).
    gene_index
        ``(n_panel,)`` vocabulary index of each column.
    rows
        Observations to tokenise; ``-1`` gives an empty (all-invalid) row.
    max_genes
        Tokens per observation.
    rng
        Random draws (training); ``None`` draws from a stream seeded by each row's content (inference; see
        :func:`content_seeds`), so an observation's tokens do not depend on the batch or the order of the rows.
    weights
        ``(n_panel,)`` probabilities of the random draws (:func:`draw_weights`), or ``None`` for uniform.
    draw
        Which of an observation's inference draws (without ``rng``): each number gives other random tokens, the
        same ones on every call.

    Returns
    -------
    ``(ids, values, valid)``, each ``(len(rows), max_genes)``: vocabulary indices, log1p values and which slots
    hold a token (panels smaller than ``max_genes`` leave the rest invalid).

    Examples
    --------
    >>> from scipy import sparse
    >>> x = sparse.csr_matrix(np.array([[0.0, 2.0, 1.0]], dtype=np.float32))
    >>> ids, values, valid = gene_tokens(x, np.array([5, 6, 7]), np.array([0]), 4)
    >>> ids.tolist(), values.tolist(), valid.tolist()
    ([[5, 6, 7, 0]], [[0.0, 2.0, 1.0, 0.0]], [[True, True, True, False]])
    """
    rows = np.asarray(rows, dtype=np.int64)
    n_panel = expression.shape[1]
    ids = np.zeros((len(rows), max_genes), dtype=np.int64)
    values = np.zeros((len(rows), max_genes), dtype=np.float32)
    valid = np.zeros((len(rows), max_genes), dtype=bool)
    present = np.flatnonzero(rows >= 0)
    if not len(present) or not n_panel:
        return ids, values, valid
    block = expression[rows[present]]  # a copy: sorting its indices leaves the slide's matrix alone
    if not block.has_sorted_indices:
        block.sort_indices()  # values are looked up by binary search within each row
    if n_panel <= max_genes:
        ids[present, :n_panel] = gene_index
        values[present, :n_panel] = block.toarray()
        valid[present, :n_panel] = True
        return ids, values, valid

    top_cols, top_vals, n_top = _top_genes(block, max_genes // 2)
    n_rest = max_genes - n_top
    if rng is None:
        seeds = _draw_seeds(content_seeds(block), draw)
        stream = lambda subset, start, count: counter_uniforms(seeds[subset], start, count)  # noqa: E731
    else:
        stream = lambda subset, start, count: rng.random((len(subset), count))  # noqa: E731
    rest_cols = _weighted_draws(stream, top_cols, n_top, n_rest, n_panel, weights)
    rest_vals = _lookup(block, rest_cols)

    # each row's top genes, then its drawn ones: n_top + n_rest = max_genes slots
    slot = np.arange(max_genes)[None, :]
    is_top = slot < n_top[:, None]
    top_slot = np.minimum(slot, top_cols.shape[1] - 1)
    rest_slot = np.maximum(slot - n_top[:, None], 0)
    cols = np.where(is_top, np.take_along_axis(top_cols, top_slot, 1), np.take_along_axis(rest_cols, rest_slot, 1))
    vals = np.where(is_top, np.take_along_axis(top_vals, top_slot, 1), np.take_along_axis(rest_vals, rest_slot, 1))
    ids[present] = gene_index[cols]
    values[present] = vals
    valid[present] = True
    return ids, values, valid


def _top_genes(block: sparse.csr_matrix, n_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's most expressed genes, at most ``n_max`` and only as many as it has nonzero values.

    Returns ``(cols, vals, counts)``: ``(n_rows, max(n_max, 1))`` columns and values, highest value first and, among
    equal values, lowest column first; entries past a row's ``counts`` are padding.
    """
    n_rows = block.shape[0]
    lengths = np.diff(block.indptr)
    data = np.asarray(block.data, dtype=np.float32)
    nonzero = np.repeat(np.arange(n_rows), lengths)[data != 0]
    counts = np.minimum(np.bincount(nonzero, minlength=n_rows), n_max)
    cols = np.zeros((n_rows, max(n_max, 1)), dtype=np.int64)  # at least one (padding) column to index
    vals = np.zeros((n_rows, max(n_max, 1)), dtype=np.float32)
    if not n_max or not len(data):
        return cols, vals, counts
    # One sortable key per entry: the value's order-preserving bit pattern above the column, complemented so that
    # the largest key is the highest value and, among equal values, the lowest column. Padding (0) sorts below.
    bits = data.view(np.uint32).astype(np.uint64)
    ordered = np.where(bits >> np.uint64(31), ~bits & _LOW32, bits | np.uint64(1 << 31))
    keys = (ordered << np.uint64(32)) | (_LOW32 - block.indices.astype(np.uint64))
    by_length = np.argsort(lengths, kind="stable")
    sorted_lengths = lengths[by_length]
    start = 0
    while start < n_rows:
        # rows sorted by length: a group's last row is its longest, and its size times that length is the budget
        area = np.arange(1, n_rows - start + 1) * sorted_lengths[start:]
        stop = start + max(int(np.searchsorted(area, _RANK_BUDGET, side="right")), 1)
        rows = by_length[start:stop]
        entries = _ranked_entries(block.indptr, keys, rows, n_max)
        keep = np.arange(entries.shape[1])[None, :] < counts[rows, None]
        cols[rows, : entries.shape[1]] = np.where(keep, block.indices[entries], 0)
        vals[rows, : entries.shape[1]] = np.where(keep, data[entries], 0.0)
        start = stop
    return cols, vals, counts


def _ranked_entries(indptr: np.ndarray, keys: np.ndarray, rows: np.ndarray, n_max: int) -> np.ndarray:
    """``(len(rows), <= n_max)`` entry indices of each row's ``n_max`` largest ``keys``, largest first.

    A row with fewer entries is padded with entries of higher rank than its own, which the caller masks by count.
    """
    lengths = indptr[rows + 1] - indptr[rows]
    width = max(int(lengths.max()), 1)
    # the entries of each row laid out in a (rows x width) array; empty slots hold key 0 and entry 0
    row_of = np.repeat(np.arange(len(rows)), lengths)
    flat = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    entry = np.zeros((len(rows), width), dtype=np.int64)
    entry[row_of, flat] = np.repeat(indptr[rows], lengths) + flat
    padded = np.zeros((len(rows), width), dtype=np.uint64)
    padded[row_of, flat] = keys[entry[row_of, flat]]
    take = min(n_max, width)
    if take < width:
        best = np.argpartition(padded, width - take, axis=1)[:, width - take :]
    else:
        best = np.broadcast_to(np.arange(width), (len(rows), width))
    order = np.argsort(np.take_along_axis(padded, best, 1), axis=1)[:, ::-1]
    return np.take_along_axis(np.take_along_axis(entry, best, 1), order, 1)


def _weighted_draws(
    stream: Callable[[np.ndarray, int, int], np.ndarray],
    top_cols: np.ndarray,
    n_top: np.ndarray,
    n_rest: np.ndarray,
    n_panel: int,
    weights: np.ndarray | None,
) -> np.ndarray:
    """``(n_rows, max(n_rest))`` panel columns drawn without replacement, none among a row's top genes.

    Candidates are drawn with replacement from ``weights`` and a repeat or a top gene is skipped: the accepted
    sequence is then exactly successive sampling without replacement from the remaining genes (each next gene
    with probability proportional to its weight among those not taken yet), the law of
    ``Generator.choice(replace=False, p=weights)`` with the top genes set aside. ``stream(rows, start, count)``
    gives the uniforms of those rows, from position ``start`` of each row's stream.
    """
    n_rows = len(n_top)
    width = int(n_rest.max())
    out = np.zeros((n_rows, width), dtype=np.int64)
    have = np.zeros(n_rows, dtype=np.int64)
    limit = np.maximum(_CANDIDATES_PER_TOKEN * n_rest, _MIN_CANDIDATES)  # candidates a row may use
    cdf = None if weights is None else np.cumsum(weights, dtype=np.float64)
    # every (row, column) pair already taken, as row * n_panel + column, kept sorted for searchsorted
    top_mask = np.arange(top_cols.shape[1])[None, :] < n_top[:, None]
    taken = np.sort((np.arange(n_rows)[:, None] * n_panel + top_cols)[top_mask])
    pending = np.arange(n_rows)
    used = 0  # candidates drawn so far by every pending row (the same number for all)
    count = max(_MIN_CANDIDATES // 8, 2 * width)
    while len(pending):
        u = stream(pending, used, count)
        if cdf is None:
            cand = np.minimum((u * n_panel).astype(np.int64), n_panel - 1)
        else:
            cand = np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), n_panel - 1)
        keys = pending[:, None] * n_panel + cand
        flat = keys.ravel()
        first = np.zeros(flat.shape, dtype=bool)
        first[np.unique(flat, return_index=True)[1]] = True  # the first time a row meets a gene in this round
        pos = np.searchsorted(taken, flat)
        seen = taken[np.minimum(pos, len(taken) - 1)] == flat if len(taken) else np.zeros(flat.shape, dtype=bool)
        within = (used + np.arange(count))[None, :] < limit[pending, None]
        accept = (first & ~seen).reshape(keys.shape) & within
        rank = have[pending, None] + np.cumsum(accept, axis=1) - 1
        use = accept & (rank < n_rest[pending, None])
        r, c = np.nonzero(use)
        out[pending[r], rank[r, c]] = cand[r, c]
        have[pending] += use.sum(axis=1)
        taken = np.sort(np.concatenate([taken, keys[use]]))  # new pairs: none was taken before
        used += count
        short = have[pending] < n_rest[pending]
        exhausted = short & (used >= limit[pending])
        for row in pending[exhausted]:  # nearly all the weight on a row's top genes: finish the row exactly
            lo, hi = np.searchsorted(taken, [row * n_panel, (row + 1) * n_panel])
            out[row, have[row] : n_rest[row]] = _ordered_sample(
                stream(np.array([row]), int(limit[row]), n_panel)[0],
                weights,
                taken[lo:hi] - row * n_panel,
                int(n_rest[row] - have[row]),
            )
        pending = pending[short & ~exhausted]
    return out


def _ordered_sample(u: np.ndarray, weights: np.ndarray | None, excluded: np.ndarray, size: int) -> np.ndarray:
    """``size`` genes in successive-sampling order, by exponential keys (Efraimidis-Spirakis), none ``excluded``.

    ``u`` holds one uniform per panel gene; the key ``-log(u) / weight`` is smallest for the gene drawn first.
    """
    with np.errstate(divide="ignore"):
        keys = -np.log1p(-u) / (1.0 if weights is None else weights)
    keys[excluded] = np.inf
    return np.argsort(keys, kind="stable")[:size]


def _lookup(block: sparse.csr_matrix, cols: np.ndarray) -> np.ndarray:
    """Values of ``block`` at row ``i``, columns ``cols[i]`` (zero where not stored), float32, shaped as ``cols``."""
    n_panel = block.shape[1]
    stored = np.repeat(np.arange(block.shape[0], dtype=np.int64), np.diff(block.indptr)) * n_panel + block.indices
    wanted = (np.arange(len(cols), dtype=np.int64)[:, None] * n_panel + cols).ravel()
    if not len(stored):
        return np.zeros(cols.shape, dtype=np.float32)
    pos = np.minimum(np.searchsorted(stored, wanted), len(stored) - 1)  # canonical CSR: stored keys are sorted
    hit = stored[pos] == wanted
    return np.where(hit, block.data[pos], 0.0).astype(np.float32).reshape(cols.shape)


def _draw_seeds(content: np.ndarray, draw: int) -> np.ndarray:
    """Seeds of one inference draw from the rows' :func:`content_seeds`."""
    salt = splitmix64(np.array([draw], dtype=np.uint64) + np.uint64(GOLDEN))[0]
    return splitmix64(content ^ salt)
