"""``st.tl.storm_domains``: spatially coherent tissue domains from the STORM embedding."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from spatialdata import SpatialData

from storm_sc._checks import check_integer
from storm_sc._constants import OBS_DOMAIN, OBSM_EMBEDDING, TABLE_TILES
from storm_sc._settings import logger
from storm_sc.io import SpatialInput, resolve
from storm_sc.io._resolve import check_keys, mpp_per_object
from storm_sc.io._slides import unique_names
from storm_sc.pp import expression_components, spatial_graph
from storm_sc.pp._alignment import shared_columns
from storm_sc.pp._graph import grid_pitch, library_codes
from storm_sc.pp._representation_graph import representation_neighbors

from ._target import (
    SlideFanout,
    as_slide_list,
    check_key_free,
    check_params_slot,
    copy_for_output,
    record_params,
    structural_keys,
)

# Expression components clustered beside the embedding: as many as the reference's gene-program axes.
EXPRESSION_PCS = 32
# Smoothing neighbours of observations on no grid (cells): their close contacts.
SMOOTH_NEIGHS = 6
# On a grid, the first ring: all neighbours within this many grid pitches, past the ring (1 pitch) and short of a
# square grid's diagonals (1.41): 6 on Visium's hexagonal grid, 4 on legacy ST's and Visium HD's square ones. The 6
# nearest would take 2 of a square grid's 4 diagonals, picked by rounding: smoothing would lean one way.
SMOOTH_RING_PITCHES = 1.25


def smoothing_graph(slide: SpatialInput, *, library_key: str | None = None) -> tuple[sparse.csr_matrix, str]:
    """The graph ``storm_domains`` smooths over (a grid's first ring, else the 6 nearest neighbours) and its rule.

    The rule is a short description for the record in ``.uns``.

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=100, n_genes=10, n_domains=2, seed=0)  # spots on a square grid
    >>> graph, rule = smoothing_graph(st.io.resolve(sdata))
    >>> int(graph.getnnz(axis=1).max()), rule  # the 4 sides, not 2 of the 4 diagonals besides
    (4, 'first ring of a 96.1 um grid')
    """
    libraries = library_codes(slide.table, library_key)
    pitch = grid_pitch(slide.centers_um, libraries)
    if pitch is not None:
        graph = spatial_graph(slide, radius_um=SMOOTH_RING_PITCHES * pitch, library_key=library_key)
        return graph, f"first ring of a {pitch:.3g} um grid"
    k = min(SMOOTH_NEIGHS, slide.n_obs - 1)
    return spatial_graph(slide, n_neighs=k, library_key=library_key), f"{k} nearest neighbours"


def smooth_embedding(x: np.ndarray, graph: sparse.spmatrix, *, steps: int, weight: float) -> np.ndarray:
    """Mix each embedding with the unweighted mean of its spatial neighbours: domains then follow tissue, not noise.

    ``graph`` holds edge lengths (as :func:`storm_sc.pp.spatial_graph` returns it); only which edges exist is used,
    so every neighbour counts the same however far it is. Observations without neighbours are left as they are.
    """
    adjacency = sparse.csr_matrix(graph, dtype=np.float64, copy=True)
    adjacency.data[:] = 1.0
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    has_neighbours = degree > 0
    inv = np.divide(1.0, degree, out=np.zeros_like(degree), where=has_neighbours)
    # One sparse operator per step, (1 - weight) * self + weight * neighbours' mean (the identity where there are no
    # neighbours): each step then holds two copies of the embedding, not the five of the written-out formula.
    step = sparse.diags(np.where(has_neighbours, 1.0 - weight, 1.0)) + weight * (sparse.diags(inv) @ adjacency)
    step = step.tocsr()
    for _ in range(steps):
        x = step @ x
    return x


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit Euclidean length (all-zero rows stay zero): distances become cosine distances."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def side_by_side(blocks: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Per slide, several representations side by side, each weighted equally.

    Each block is centred over all slides and divided by its root-mean-square row length, so that every block
    contributes the same share of the squared distances whatever its width or scale.

    Parameters
    ----------
    blocks
        One list per representation, holding one ``(n_obs_i, d_b)`` array per slide.

    Returns
    -------
    One ``(n_obs_i, sum_b d_b)`` float64 array per slide.

    Examples
    --------
    >>> a = [np.array([[0.0, 2.0], [0.0, -2.0]])]
    >>> b = [np.array([[10.0], [-10.0]])]
    >>> side_by_side([a, b])[0].tolist()
    [[0.0, 1.0, 1.0], [0.0, -1.0, -1.0]]
    """
    n_total = sum(len(x) for x in blocks[0])
    scaled = []
    for block in blocks:
        centre = sum(x.sum(axis=0, dtype=np.float64) for x in block) / n_total
        rms = np.sqrt(sum(((x - centre) ** 2).sum() for x in block) / n_total)
        scaled.append([(x - centre) / (rms if rms > 0 else 1.0) for x in block])
    return [np.hstack(parts) for parts in zip(*scaled, strict=True)]


def _expression_pcs(slides: list[SpatialInput], requested: int) -> int:
    """``requested``, or 0 when the slides give no expression to compute components from.

    A warning says so, or a note when the slides are all tiles of H&E-only slides (no expression by construction).
    """
    if not requested:
        return 0
    without = [s for s in slides if s.table.n_vars < 2]
    if without or len(shared_columns([s.table for s in slides])[0]) < 2:
        names = [s.library_id for s in without]
        reason = f"slide(s) {names} have no expression table" if without else "the slides share < 2 genes"
        # Tiles of H&E-only slides have no expression by construction: nothing to warn about there.
        expected = bool(without) and all(s.table_key == TABLE_TILES for s in without) and len(without) == len(slides)
        (logger.info if expected else logger.warning)(
            "storm_domains: %s; clustering the embedding alone (expression_pcs=0).", reason
        )
        return 0
    return requested


def _slide_components(
    tables: list[AnnData], n_components: int, *, layer: str | None, library_key: str | None
) -> list[np.ndarray]:
    """Expression components of each table; with ``library_key``, every library is standardised on its own."""
    if library_key is None:
        return expression_components(tables, n_components=n_components, layer=layer)
    where = [(t, rows) for t, rows_of in enumerate(_library_groups(tables, library_key)) for rows in rows_of]
    scores = expression_components([tables[t][rows] for t, rows in where], n_components=n_components, layer=layer)
    out = [np.zeros((table.n_obs, scores[0].shape[1]), dtype=np.float32) for table in tables]
    for (t, rows), score in zip(where, scores, strict=True):
        out[t][rows] = score
    return out


def _one_scale_per_object(value: Any, item: SpatialData | AnnData, library_key: str) -> float | None:
    """The one ``mpp`` of an AnnData stacking sections, from a mapping of its sections as ``storm_embed`` takes.

    ``storm_domains`` places a stacked AnnData's positions at one scale (its sections keep their own rows and
    neighbours): sections of different scales are refused, with what to do.
    """
    if not isinstance(value, Mapping):
        return value
    names = [] if isinstance(item, SpatialData) or library_key not in item.obs else item.obs[library_key].unique()
    names = sorted(str(n) for n in names)
    unknown = sorted(str(k) for k in value if str(k) not in names)
    if unknown:
        raise ValueError(f"`mpp` names sections {unknown} that .obs[{library_key!r}] does not hold; it holds {names}.")
    scales = {value.get(n) for n in names}
    if len(scales) > 1:
        raise ValueError(
            f"`mpp` gives the sections of .obs[{library_key!r}] different scales ({dict(value)}); storm_domains reads a "
            "stacked AnnData at one scale. Pass the sections as a list of AnnData, each with its own `mpp`."
        )
    return scales.pop() if scales else None


def _library_groups(tables: list[AnnData], library_key: str | None) -> list[list[np.ndarray]]:
    """Row indices of each library of each table (the whole table when ``library_key`` is None)."""
    if library_key is None:
        return [[np.arange(table.n_obs)] for table in tables]
    groups = []
    for table in tables:
        codes = library_codes(table, library_key).codes  # the grouping spatial_graph uses
        groups.append([np.flatnonzero(codes == code) for code in np.unique(codes)])
    return groups


def centre_each_slide(reps: list[np.ndarray], groups: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each slide's (each library's) mean embedding subtracted from its observations.

    Parameters
    ----------
    reps
        One ``(n_obs_i, d)`` embedding per table.
    groups
        Per table, the row indices of each of its slides (see ``library_key``).

    Returns
    -------
    The centred float64 embeddings.

    Examples
    --------
    >>> centre_each_slide([np.array([[1.0], [3.0]]), np.array([[10.0]])], [[np.arange(2)], [np.arange(1)]])
    [array([[-1.],
           [ 1.]]), array([[0.]])]
    """
    out = []
    for rep, rows_of in zip(reps, groups, strict=True):
        rep = np.array(rep, dtype=np.float64)
        for rows in rows_of:
            rep[rows] -= rep[rows].mean(axis=0)
        out.append(rep)
    return out


def canonical_order(slides: list[SpatialInput], sections: list[list[np.ndarray]], z: np.ndarray) -> np.ndarray:
    """Row order of the stacked observations of ``slides`` by slide, section, position and embedding, never by row.

    Parameters
    ----------
    slides
        The slides, whose observations are stacked in this order in ``z``.
    sections
        Per slide, the row indices of each of its sections (see :func:`_library_groups`).
    z
        ``(n_obs, d)`` stacked representation: its first column breaks ties of observations at the same position.

    Returns
    -------
    ``(n_obs,)`` permutation of the stacked rows.
    """
    slide_of, section_of = np.empty(len(z), dtype=np.int64), np.empty(len(z), dtype=np.int64)
    offset = 0
    for k, (slide, groups) in enumerate(zip(slides, sections, strict=True)):
        slide_of[offset : offset + slide.n_obs] = k
        for code, rows in enumerate(groups):
            section_of[offset + rows] = code
        offset += slide.n_obs
    xy = np.round(np.vstack([s.centers_um for s in slides]), 4)
    return np.lexsort((z[:, 0], xy[:, 1], xy[:, 0], section_of, slide_of))


def _cluster(z: np.ndarray, n_domains: int | None, resolution: float, random_state: int) -> np.ndarray:
    if n_domains is not None:
        from sklearn.cluster import KMeans

        return KMeans(n_clusters=n_domains, n_init=10, random_state=random_state).fit_predict(z)
    import scanpy as sc

    tmp = AnnData(np.zeros((len(z), 0), dtype=np.float32), obsm={"z": z})
    representation_neighbors(tmp, use_rep="z", n_neighbors=15, random_state=random_state)
    sc.tl.leiden(tmp, resolution=resolution, random_state=random_state, flavor="igraph", n_iterations=-1,
                 directed=False)  # fmt: skip
    return tmp.obs["leiden"].astype(int).to_numpy()


def _ordered_labels(labels: np.ndarray) -> pd.Categorical:
    """Name domains 0, 1, ... by decreasing size so that the naming itself is reproducible."""
    uniq, counts = np.unique(labels, return_counts=True)
    order = uniq[np.lexsort((uniq, -counts))]
    rename = {old: str(new) for new, old in enumerate(order)}
    names = [str(i) for i in range(len(order))]
    return pd.Categorical([rename[v] for v in labels], categories=names)


def _palette(n: int) -> list[str]:
    from scanpy.plotting.palettes import default_20, default_102

    if n <= 20:
        return list(default_20[:n])
    return [default_102[i % len(default_102)] for i in range(n)]


def storm_domains(
    data: SpatialData | AnnData | list[SpatialData | AnnData],
    n_domains: int | None = None,
    *,
    resolution: float = 1.0,
    use_rep: str = OBSM_EMBEDDING,
    key_added: str = OBS_DOMAIN,
    library_key: str | None = None,
    random_state: int = 0,
    table_key: str | None = None,
    mpp: float | Mapping[str, float | None] | Sequence[float | Mapping[str, float | None] | None] | None = None,
    smooth_steps: int = 2,
    smooth_weight: float = 0.5,
    center: Literal["slide", "all"] = "slide",
    expression_pcs: int = EXPRESSION_PCS,
    layer: str | None = None,
    overwrite: bool = False,
    copy: bool = False,
) -> SpatialData | AnnData | list[SpatialData | AnnData] | None:
    """Spatial domains (a tissue map) from the STORM embedding.

    The embedding is clustered together with the slides' own expression components (``expression_pcs``, when the
    tables hold expression): the principal components of their most variable genes, standardised within each
    slide (:func:`storm_sc.pp.expression_components`), the two blocks weighted equally. The embedding brings what
    the model learned across its pretraining corpus and, where there is an H&E image, morphology; the components
    bring the slide's own axes of variation, which a model pretrained on a small corpus does not know for tissues
    it has not seen (``benchmarks/README.md`` measures both alone and together; ``expression_pcs=0`` clusters the
    embedding alone).

    Embeddings are centred (each slide on its own mean by default, see ``center``) and scaled to unit length, so
    that domains follow the direction of an embedding (cosine / correlation geometry), not its norm. Each
    observation's embedding is then mixed with the unweighted mean of its spatial neighbours (in microns, never
    across slides: on a grid of spots or bins, its first ring, 6 spots on Visium and 4 on legacy ST; for cells, the
    6 nearest), brought back to unit length, and all observations of all slides are clustered together,
    so that a domain means the same thing on every slide analysed in one call. With ``n_domains`` the clustering is
    k-means with exactly that many domains (for comparison with annotations); otherwise Leiden on a
    k-nearest-neighbour graph of the smoothed embedding, whose number of domains grows with ``resolution``. Domains
    are named ``"0"``, ``"1"``, ... by decreasing size; the result is deterministic for a ``random_state``.

    Parameters
    ----------
    data
        A SpatialData or AnnData whose table holds ``.obsm[use_rep]`` (see :func:`storm_sc.tl.storm_embed`), or a
        list of them (domains consistent across slides). A SpatialData holding several slides
        (``spatialdata.concatenate``, see :func:`storm_sc.io.split_slides`), or an AnnData holding several libraries
        in ``.uns["spatial"]`` (``scanpy.concat``), is analysed as the list of its slides, and the results are
        written back into its table(s).
    n_domains
        Exact number of domains; ``None`` lets ``resolution`` decide.
    resolution
        Leiden resolution when ``n_domains`` is ``None`` (higher: more domains).
    use_rep
        The embedding in ``.obsm``.
    key_added
        Key in ``.obs`` of the domains; colours go to ``.uns[f"{key_added}_colors"]``.
    library_key
        Column of ``.obs`` telling apart several slides held in one table (no smoothing across them).
    random_state
        Seed of the clustering.
    table_key
        Which table, when the SpatialData holds several.
    mpp
        Microns per coordinate unit, for slides that do not record their scale (e.g. an AnnData with positions
        only; as given to :func:`storm_sc.tl.storm_embed`): one number, or a list with one value (or ``None``) per
        object of ``data``; for an object holding several slides, a mapping of slide name to value.
    smooth_steps, smooth_weight
        Rounds of neighbour mixing and the share of the neighbours' mean in each (0 steps: no smoothing). Tissue
        whose layers are about one spot thick (the olfactory bulb on legacy ST) keeps them better with one step.
    center
        ``"slide"``: each slide's (with ``library_key``, each library's) mean embedding is subtracted before
        clustering, as each slide's genes are standardised for the expression components: domains follow what
        varies within the slides, not what differs between whole slides (batch effects, a slide without an image).
        ``"all"``: one centre for all slides, which keeps those differences (slides of different patients whose
        tissue mix differs). The same for a single slide.
    expression_pcs
        Expression components clustered beside the embedding (0: the embedding alone). Skipped, with a warning,
        when a slide's table has no genes or the slides share fewer than two. With ``library_key``, each library's
        genes are standardised over that library, as each slide's are.
    layer
        Layer holding the expression for ``expression_pcs`` instead of ``.X`` (counts, normalised or log1p).
    overwrite
        Replace an existing ``.obs[key_added]``.
    copy
        Return a copy with the result instead of writing into ``data``.

    Returns
    -------
    ``None``, or the copy (a list for a list) when ``copy=True``. Writes, on the table of each slide:

    - ``.obs[key_added]``: categorical domains;
    - ``.uns[f"{key_added}_colors"]``: one colour per domain, shared by every slide of the call;
    - ``.uns["storm"][key_added]``: the parameters, and which slides were clustered together (``clustered_with``,
      and ``clustering``, a digest the plots use to tell domains numbered by separate calls).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=40, n_domains=3, seed=0)
    >>> sdata["table"].obsm["X_storm"] = sdata["table"].X.toarray()  # any embedding works
    >>> st.tl.storm_domains(sdata, n_domains=3)
    >>> sdata["table"].obs["storm_domain"].cat.categories.tolist()
    ['0', '1', '2']
    """
    check_integer(n_domains, "n_domains", optional=True)
    check_integer(random_state, "random_state", minimum=0)
    if not resolution > 0:
        raise ValueError(f"`resolution` must be positive, got {resolution!r}.")
    check_integer(smooth_steps, "smooth_steps", minimum=0)
    if not 0.0 <= smooth_weight <= 1.0:
        raise ValueError(f"`smooth_weight` must be in [0, 1], got {smooth_weight!r}.")
    check_integer(expression_pcs, "expression_pcs", minimum=0)
    if center not in ("slide", "all"):
        raise ValueError(f"`center` must be 'slide' or 'all', got {center!r}.")
    check_keys(table_key=table_key, library_key=library_key)
    slides, single = as_slide_list(data)
    mpps = mpp_per_object(mpp, len(slides))
    if library_key is not None:
        mpps = [_one_scale_per_object(value, item, library_key) for value, item in zip(mpps, slides, strict=True)]
    outputs = [copy_for_output(s) for s in slides] if copy else slides
    # the slides of a SpatialData holding several, as a list (stacked sections: see library_key)
    fanout = SlideFanout(outputs, table_key, hint_stacked=library_key is None)
    targets = fanout.slides

    resolved: list[SpatialInput] = []
    for k, t in enumerate(targets):
        # Domains need positions and the embedding, not the image: do not let a missing or misplaced image stop them.
        with fanout.naming_scales(k):
            resolved.append(resolve(t, table_key=table_key, mpp=fanout.mpp_of(k, mpps), use_image=False))
    # two copies of one dataset share a name: numbered as the plots number them, so that a message says which one
    for slide, name in zip(resolved, unique_names([s.library_id for s in resolved]), strict=True):
        table = slide.table
        if use_rep not in table.obsm:
            raise KeyError(
                f"{name}: .obsm[{use_rep!r}] not found; run st.tl.storm_embed first or pass `use_rep=` "
                f"(available: {sorted(table.obsm)})."
            )
        if library_key is not None and library_key not in table.obs:
            raise KeyError(f"{name}: `library_key` {library_key!r} is not a column of .obs.")
        library_codes(table, library_key)  # refuses missing slide names now, not in the spatial graph later
        rep = np.asarray(table.obsm[use_rep])
        if rep.ndim != 2 or not np.issubdtype(rep.dtype, np.number) or not np.isfinite(rep).all():
            raise ValueError(f"{name}: .obsm[{use_rep!r}] must be a finite 2-D array.")
        if expression_pcs and layer is not None and layer not in table.layers:
            raise KeyError(f"{name}: layer {layer!r} not found (layers: {sorted(table.layers)}).")
        protected = structural_keys(table, "obs")
        if library_key is not None:
            protected[library_key] = "section names (`library_key`)"
        check_key_free(table.obs, key_added, f"{name}: .obs", overwrite=overwrite, protected=protected)
        check_params_slot(table, f"{name}: ")
    widths = [np.shape(s.table.obsm[use_rep])[1] for s in resolved]
    if len(set(widths)) > 1:
        raise ValueError(
            f".obsm[{use_rep!r}] has {widths} columns on the slides: embeddings clustered together must come from "
            "the same model and settings (level=); embed every slide with the same call of st.tl.storm_embed."
        )
    n_total = sum(s.n_obs for s in resolved)
    if n_domains is not None and n_domains > n_total:
        raise ValueError(f"`n_domains`={n_domains} exceeds the number of observations ({n_total}).")

    start = time.perf_counter()
    reps = [np.asarray(slide.table.obsm[use_rep]) for slide in resolved]
    sections = _library_groups([s.table for s in resolved], library_key)
    n_sections = sum(len(groups) for groups in sections)
    if center == "slide":
        reps = centre_each_slide(reps, sections)
    n_pcs = _expression_pcs(resolved, expression_pcs)
    if n_pcs:
        try:
            pcs = _slide_components([s.table for s in resolved], n_pcs, layer=layer, library_key=library_key)
        except ValueError as err:
            if "The expression matrix holds" not in str(err):
                raise
            raise ValueError(f"{err} Or cluster the embedding alone with `expression_pcs=0`.") from err
        reps = side_by_side([reps, pcs])
        n_pcs = pcs[0].shape[1]
    # Centred, unit-length embeddings (correlation geometry): the offset shared by every observation says nothing
    # about domains, STORM's contrastive objectives compare unit-length embeddings, and each observation then weighs
    # the same in its neighbours' mean. After center="slide" the embedding block is already centred.
    centre = sum(rep.sum(axis=0, dtype=np.float64) for rep in reps) / n_total
    parts, rules = [], []
    for slide, rep in zip(resolved, reps, strict=True):
        rep = unit_rows(rep - centre)  # float64 from here on
        rule = None
        if smooth_steps and slide.n_obs > 1:
            graph, rule = smoothing_graph(slide, library_key=library_key)
            rep = smooth_embedding(rep, graph, steps=smooth_steps, weight=smooth_weight)
        parts.append(rep)
        rules.append(rule)
    # float32 halves k-means' memory (its copies of the data dominate the peak on a million cells).
    z = unit_rows(parts[0] if len(parts) == 1 else np.vstack(parts)).astype(np.float32)
    del parts, reps, rep
    # Clustered in an order the observations fix themselves (slide, section, position), not the table's rows:
    # k-means' seeding and the neighbour graph's traversal follow the row order, and shuffled rows of the same
    # cells gave other domains (ARI 0.97 on a Xenium crop).
    order = canonical_order(resolved, sections, z)
    raw = np.empty(len(z), dtype=np.int64)
    raw[order] = _cluster(z[order], n_domains, resolution, random_state)
    labels = _ordered_labels(raw)
    colors = _palette(len(labels.categories))

    # Which slides were clustered together, by name and by a digest of their positions (slides of separate objects
    # often share a name): plots drawing several slides check it, since domain numbers from separate calls do not
    # name the same domains.
    clustered_with = [s.library_id for s in resolved]
    clustering = hashlib.sha256(b"".join(np.round(s.centers_um, 3).astype(np.float64).tobytes() for s in resolved))
    offset = 0
    for slide, rule in zip(resolved, rules, strict=True):
        table = slide.table
        table.obs[key_added] = pd.Categorical(
            np.asarray(labels)[offset : offset + slide.n_obs], categories=labels.categories
        )
        offset += slide.n_obs
        table.uns[f"{key_added}_colors"] = colors
        record_params(
            table,
            key_added,
            {
                "tool": "storm_domains",
                "n_domains": n_domains,
                "n_found": len(labels.categories),
                "resolution": resolution if n_domains is None else None,
                "method": "kmeans" if n_domains is not None else "leiden",
                "use_rep": use_rep,
                "library_key": library_key,
                "random_state": random_state,
                "smooth_steps": smooth_steps,
                "smooth_weight": smooth_weight,
                "smooth_neighbours": rule,
                "center": center,
                "expression_pcs": n_pcs,
                "layer": layer if n_pcs else None,
                "n_slides": n_sections,
                "clustered_with": clustered_with,
                "clustering": clustering.hexdigest()[:16],
            },
        )
    logger.info(
        "added .obs[%r]: %d domains over %d observations in %d slide(s), %.1f s",
        key_added,
        len(labels.categories),
        n_total,
        n_sections,
        time.perf_counter() - start,
    )
    fanout.write_back(
        [slide.table for slide in resolved], obs=[key_added], uns=[f"{key_added}_colors"], params=key_added
    )
    if not copy:
        return None
    return outputs[0] if single else outputs
