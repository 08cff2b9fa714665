"""Which gene tokens represent an observation: its most expressed genes plus measured genes drawn at random."""

from __future__ import annotations

import hashlib

import numpy as np
from scipy import sparse

from storm_sc.pp._expression import gene_moments

# Seed of the draws at inference time, with each observation's own expression (see content_seed): its tokens depend
# only on what it measured and its slide's draw weights, so embeddings are reproducible and independent of
# batching, of the order of the table's rows and of which other rows it holds.
INFERENCE_SEED = 20_240_403
# Every measured gene keeps at least this share of the mean draw weight, however constant it is on the slide.
DRAW_FLOOR = 0.1


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


def content_seed(cols: np.ndarray, vals: np.ndarray) -> int:
    """A 64-bit seed from one observation's measured genes and values (a CSR row's columns and data).

    Seeding inference draws by the row's position instead made a spot's embedding change when the table was sorted,
    subset or concatenated.

    Examples
    --------
    >>> a = content_seed(np.array([1, 4]), np.array([0.5, 2.0], dtype=np.float32))
    >>> b = content_seed(np.array([1, 4], dtype=np.int32), np.array([0.5, 2.0]))  # the same row, other dtypes
    >>> a == b, a == content_seed(np.array([1]), np.array([0.5]))
    (True, False)
    """
    digest = hashlib.blake2b(digest_size=8)
    digest.update(np.ascontiguousarray(cols, dtype=np.int64).tobytes())
    digest.update(np.ascontiguousarray(vals, dtype=np.float32).tobytes())
    return int.from_bytes(digest.digest(), "little")


def row_tokens(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    row: int,
    n_panel: int,
    max_genes: int,
    rng: np.random.Generator,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Panel columns and values of one CSR row's tokens.

    With a panel of at most ``max_genes`` genes every measured gene is a token. Otherwise half the budget goes to
    the most expressed genes (stable order: ties by column) and the rest to measured genes drawn at random
    (with probabilities ``weights``, see :func:`draw_weights`; uniform without), which are mostly zeros:
    "measured but absent" is information a panel-agnostic model must see.
    """
    start, end = indptr[row], indptr[row + 1]
    cols, vals = indices[start:end], data[start:end]
    if n_panel <= max_genes:
        out = np.zeros(n_panel, dtype=np.float32)
        out[cols] = vals
        return np.arange(n_panel), out
    n_top = min(int(np.count_nonzero(vals)), max_genes // 2)
    order = np.lexsort((cols, -vals))[:n_top]
    top_cols, top_vals = cols[order], vals[order].astype(np.float32)
    n_rest = max_genes - n_top
    draw = rng.choice(n_panel, size=min(n_panel, n_rest + n_top), replace=False, p=weights)
    rest = draw[~np.isin(draw, top_cols, assume_unique=True)][:n_rest]
    # cols of a canonical CSR row are sorted: look the drawn columns' values up by binary search
    pos = np.searchsorted(cols, rest)
    pos_c = np.minimum(pos, max(len(cols) - 1, 0))
    hit = (pos < len(cols)) & (cols[pos_c] == rest) if len(cols) else np.zeros(len(rest), dtype=bool)
    rest_vals = np.where(hit, vals[pos_c] if len(cols) else 0.0, 0.0).astype(np.float32)
    return np.concatenate([top_cols, rest]), np.concatenate([top_vals, rest_vals])


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

    Parameters
    ----------
    expression
        ``(n_obs, n_panel)`` CSR log1p expression of one slide (canonical: sorted column indices).
    gene_index
        ``(n_panel,)`` vocabulary index of each column.
    rows
        Observations to tokenise; ``-1`` gives an empty (all-invalid) row.
    max_genes
        Tokens per observation.
    rng
        Random draws (training); ``None`` draws from a generator seeded by each row's content (inference; see
        :func:`content_seed`).
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
    n_panel = expression.shape[1]
    width = max_genes
    ids = np.zeros((len(rows), width), dtype=np.int64)
    values = np.zeros((len(rows), width), dtype=np.float32)
    valid = np.zeros((len(rows), width), dtype=bool)
    indptr, indices, data = expression.indptr, expression.indices, expression.data
    for k, row in enumerate(rows):
        if row < 0:
            continue
        if rng is not None:
            gen = rng
        else:
            start, end = indptr[row], indptr[row + 1]
            seed = [INFERENCE_SEED, content_seed(indices[start:end], data[start:end])]
            gen = np.random.default_rng(seed + [draw] if draw else seed)
        cols, vals = row_tokens(indptr, indices, data, int(row), n_panel, max_genes, gen, weights)
        t = len(cols)
        ids[k, :t] = gene_index[cols]
        values[k, :t] = vals
        valid[k, :t] = True
    return ids, values, valid
