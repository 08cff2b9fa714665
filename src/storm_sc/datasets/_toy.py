"""Generated slides with planted spatial domains whose morphology and expression are linked (tests, offline demos)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import ndimage, sparse
from spatialdata import SpatialData

from storm_sc._constants import ATTRS_DATASET, ATTRS_SEED, ATTRS_STORM, OBS_TRUE_DOMAIN, VAR_MARKER_OF
from storm_sc.io import from_arrays

# The domain map is drawn on a grid this many times coarser than the image; boundaries stay smooth at spot scale.
_MAP_COARSENING = 4
# Negative-binomial dispersion (size) of the counts: variance = mu + mu^2 / _NB_SIZE.
_NB_SIZE = 5.0


def _check(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}; got {value!r}.")


def _domain_seeds(rng: np.random.Generator, n_domains: int, width: float, height: float) -> np.ndarray:
    """Well-separated domain centres with similar areas: farthest-point picks, then Lloyd (k-means) steps."""
    candidates = rng.uniform((0, 0), (width, height), size=(64 * n_domains, 2))
    seeds = [candidates[0]]
    dist = np.linalg.norm(candidates - seeds[0], axis=1)
    for _ in range(1, n_domains):
        seeds.append(candidates[int(np.argmax(dist))])
        dist = np.minimum(dist, np.linalg.norm(candidates - seeds[-1], axis=1))
    centres = np.asarray(seeds)
    # farthest-point seeds hug the border and leave one huge central region; Lloyd steps even the areas out
    for _ in range(10):
        owner = np.argmin(((candidates[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        for d in range(n_domains):
            if (owner == d).any():
                centres[d] = candidates[owner == d].mean(axis=0)
    return centres


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int = 6) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of the given shape (cubic upsampling of a small random grid)."""
    coarse = rng.uniform(-1, 1, size=(cells, cells))
    zoomed = ndimage.zoom(coarse, (shape[0] / cells, shape[1] / cells), order=3, mode="reflect", grid_mode=True)
    return np.clip(zoomed[: shape[0], : shape[1]], -1, 1)


def _domain_map(rng: np.random.Generator, seeds: np.ndarray, shape: tuple[int, int], step_um: float) -> np.ndarray:
    """Domain index for each cell of a grid (``step_um`` per cell): Voronoi regions of the seeds, warped."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx = (xx + 0.5) * step_um
    yy = (yy + 0.5) * step_um
    # warping by smooth noise bends the straight Voronoi borders into organic ones
    amplitude = 0.12 * max(h, w) * step_um
    xx += amplitude * _smooth_noise(rng, shape).astype(np.float32)
    yy += amplitude * _smooth_noise(rng, shape).astype(np.float32)
    dist = (xx[None] - seeds[:, 0, None, None].astype(np.float32)) ** 2
    dist += (yy[None] - seeds[:, 1, None, None].astype(np.float32)) ** 2
    return np.argmin(dist, axis=0).astype(np.int16)


def _morphology(rng: np.random.Generator, n_domains: int) -> dict[str, np.ndarray]:
    """Per-domain H&E-like appearance; each property is spread over its range so that domains differ."""

    def spread(low: float, high: float) -> np.ndarray:
        return rng.permutation(np.linspace(low, high, n_domains)) if n_domains > 1 else np.array([(low + high) / 2])

    stroma = np.stack([spread(215, 245), spread(140, 200), spread(175, 225)], axis=1)  # eosin pinks
    nuclei = np.stack([spread(50, 120), spread(25, 75), spread(110, 170)], axis=1)  # haematoxylin purples
    return {
        "stroma_rgb": stroma,
        "nucleus_rgb": nuclei,
        "nuclei_per_10k_um2": spread(8, 70),
        "nucleus_radius_um": spread(2.5, 6.0),
        "noise_sd": spread(4, 16),
    }


def _render(
    rng: np.random.Generator,
    coarse_map: np.ndarray,
    shape_px: tuple[int, int],
    mpp: float,
    look: dict[str, np.ndarray],
) -> np.ndarray:
    h, w = shape_px
    factor = _MAP_COARSENING
    dom = np.repeat(np.repeat(coarse_map, factor, axis=0), factor, axis=1)[:h, :w]
    img = look["stroma_rgb"][dom].astype(np.float32)
    img *= (1 + 0.06 * _smooth_noise(rng, (h, w), cells=12))[..., None].astype(np.float32)

    # nuclei: Poisson points per domain; one distance transform finds each pixel's nearest nucleus centre
    area_um2 = h * w * mpp * mpp
    points = np.zeros((h, w), dtype=bool)
    for d in range(len(look["stroma_rgb"])):
        n = rng.poisson(look["nuclei_per_10k_um2"][d] * area_um2 / 1e4)
        ys = rng.integers(0, h, n)
        xs = rng.integers(0, w, n)
        keep = dom[ys, xs] == d
        points[ys[keep], xs[keep]] = True
    if points.any():
        dist, (iy, ix) = ndimage.distance_transform_edt(~points, return_indices=True)
        owner = dom[iy, ix]
        inside = dist * mpp <= look["nucleus_radius_um"][owner]
        shade = 0.8 + 0.4 * rng.random((h, w), dtype=np.float32)
        img[inside] = look["nucleus_rgb"][owner[inside]] * shade[inside, None]
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * look["noise_sd"][dom][..., None].astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _expression(
    rng: np.random.Generator, domains: np.ndarray, n_genes: int, n_domains: int
) -> tuple[sparse.csr_matrix, np.ndarray]:
    n_markers = max(1, min(10, n_genes // (2 * n_domains)))
    base = rng.lognormal(mean=0.0, sigma=1.0, size=n_genes) * 0.8
    fold = np.ones((n_domains, n_genes))
    marker_of = np.full(n_genes, "", dtype=object)
    order = rng.permutation(n_genes)
    for d in range(n_domains):
        genes = order[d * n_markers : (d + 1) * n_markers]
        if len(genes) == 0:
            break
        fold[d, genes] = rng.uniform(4.0, 8.0, size=len(genes))
        marker_of[genes] = f"D{d}"
    size_factor = rng.lognormal(mean=0.0, sigma=0.3, size=len(domains))
    mu = size_factor[:, None] * base[None, :] * fold[domains]
    counts = rng.poisson(rng.gamma(_NB_SIZE, mu / _NB_SIZE))
    return sparse.csr_matrix(counts.astype(np.float32)), marker_of


def toy(
    n_obs: int = 1000,
    n_genes: int = 200,
    n_domains: int = 5,
    *,
    image: bool = True,
    mpp: float = 2.0,
    pitch_um: float = 100.0,
    spot_diameter_um: float = 55.0,
    seed: int = 0,
) -> SpatialData:
    """Generate a slide with planted spatial domains that link morphology and expression.

    Spots sit on a square grid (``pitch_um`` apart, lightly jittered) over a field split into ``n_domains``
    organically shaped domains. Each domain has its own H&E-like appearance (stroma and nucleus colours, nucleus
    density and size, grain) in a generated RGB image, and its own marker genes (4-8x up) in negative-binomial counts.
    Deterministic for a seed.

    Parameters
    ----------
    n_obs
        Number of spots.
    n_genes
        Number of genes; ``min(10, n_genes // (2 * n_domains))`` of them mark each domain, the rest are background.
    n_domains
        Number of planted domains.
    image
        Generate the H&E-like image; ``False`` for expression and positions only.
    mpp
        Microns per image pixel (the image covers the field; ~1,600 px a side for 1,000 spots at the defaults).
    pitch_um
        Spot centre-to-centre distance in microns.
    spot_diameter_um
        Spot diameter in microns.
    seed
        Random seed.

    Returns
    -------
    A SpatialData built by :func:`storm_sc.io.from_arrays` (platform ``"generic"``, library ``"toy"``): the image,
    circles and a table of counts with the planted domain in ``.obs["true_domain"]`` (categorical ``D0``, ``D1``...)
    and each gene's domain in ``.var["marker_of"]`` (``""`` for background genes).

    Examples
    --------
    >>> import storm_sc as st
    >>> sdata = st.datasets.toy(n_obs=200, n_genes=50, n_domains=3, seed=1)
    >>> sdata["table"].obs["true_domain"].cat.categories.tolist()
    ['D0', 'D1', 'D2']
    """
    _check("n_domains", n_domains, 1)
    _check("n_obs", n_obs, 3 * n_domains)
    _check("n_genes", n_genes, 1)
    for name, value in (("mpp", mpp), ("pitch_um", pitch_um), ("spot_diameter_um", spot_diameter_um)):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"`{name}` must be a positive number; got {value!r}.")
    rng = np.random.default_rng(seed)

    cols = math.ceil(math.sqrt(n_obs))
    rows = math.ceil(n_obs / cols)
    width_um, height_um = cols * pitch_um, rows * pitch_um
    grid = np.stack(np.meshgrid(np.arange(cols), np.arange(rows)), axis=-1).reshape(-1, 2)[:n_obs]
    centers_um = (grid + 0.5) * pitch_um + rng.uniform(-0.05, 0.05, size=(n_obs, 2)) * pitch_um

    shape_px = (math.ceil(height_um / mpp), math.ceil(width_um / mpp))
    step_um = _MAP_COARSENING * mpp
    coarse_shape = (math.ceil(shape_px[0] / _MAP_COARSENING), math.ceil(shape_px[1] / _MAP_COARSENING))
    seeds = _domain_seeds(rng, n_domains, width_um, height_um)
    coarse_map = _domain_map(rng, seeds, coarse_shape, step_um)
    cell = np.minimum((centers_um / step_um).astype(int), np.array(coarse_shape[::-1]) - 1)
    domains = coarse_map[cell[:, 1], cell[:, 0]].astype(int)
    missing = sorted(set(range(n_domains)) - set(domains.tolist()))
    if missing:
        raise ValueError(
            f"With seed={seed}, domains {missing} received no spot; use more spots (n_obs) or fewer domains."
        )

    look = _morphology(rng, n_domains)
    counts, marker_of = _expression(rng, domains, n_genes, n_domains)
    labels = [f"D{d}" for d in range(n_domains)]
    table = AnnData(
        counts,
        obs=pd.DataFrame(
            {OBS_TRUE_DOMAIN: pd.Categorical.from_codes(domains, categories=labels)},
            index=[f"spot_{i:05d}" for i in range(n_obs)],
        ),
        var=pd.DataFrame({VAR_MARKER_OF: marker_of.astype(str)}, index=[f"gene_{g:04d}" for g in range(n_genes)]),
    )
    pixels = _render(rng, coarse_map, shape_px, mpp, look) if image else None
    sdata = from_arrays(
        table,
        centers_um / mpp,
        pixels,
        mpp=mpp,
        spot_diameter_um=spot_diameter_um,
        platform="generic",
        library_id="toy",
        # one synthetic slide, placed as spatialdata-io's Xenium and CosMx readers place theirs
        coordinate_system="global",
    )
    sdata.attrs[ATTRS_STORM][ATTRS_DATASET] = "toy"
    sdata.attrs[ATTRS_STORM][ATTRS_SEED] = int(seed)
    return sdata
