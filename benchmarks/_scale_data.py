"""Generated Xenium-like slides at any size (10k to 1M cells) for the scale benchmark, without holding the image.

A slide is a square of tissue with cells on a jittered grid (``spacing_um`` apart, like segmented cells of a
Xenium run), a sparse count matrix over a few hundred genes whose means follow spatial domains (Voronoi patches
of the tissue), and an H&E-like image at ``mpp`` microns per pixel: an eosin background tinted by domain and a
hematoxylin nucleus at every cell. The image is a dask array computed block by block (each 1024 x 1024 block draws
only the nuclei that touch it), written once with its multiscale pyramid through :func:`storm_sc.io.from_arrays`
and ``SpatialData.write``; readers then get it back lazily from the zarr store. At 1M cells, 12 um apart and
0.5 um/px, the full-resolution image is 24000 x 24000 px (1.6 GiB of RGB) and never exists in memory at once.

Cells are stored in a random order (like a segmentation's cell ids, which need not follow space), so that nothing
downstream can rely on table order being spatially coherent.

    python -m benchmarks._scale_data --n-obs 100000 --out /tmp/storm_scale
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
from scipy import sparse

_BLOCK = 1024
# Colours (RGB) of the stains: eosin-pink cytoplasm and stroma, hematoxylin-purple nuclei.
_EOSIN = np.array([232.0, 170.0, 200.0])
_HEMATOXYLIN = np.array([80.0, 50.0, 135.0])
_LOG = logging.getLogger("benchmarks.scale_data")


@dataclass(frozen=True)
class SlideSpec:
    """Parameters of one generated slide; equal specs give bit-identical slides."""

    n_obs: int
    n_genes: int = 400
    n_domains: int = 6
    spacing_um: float = 12.0
    mpp: float = 0.5
    mean_counts: float = 150.0
    seed: int = 0

    @property
    def name(self) -> str:
        return f"xeniumlike_n{self.n_obs}_g{self.n_genes}_d{self.n_domains}_s{self.seed}"

    @property
    def grid_side(self) -> int:
        return math.ceil(math.sqrt(self.n_obs))

    @property
    def side_px(self) -> int:
        return math.ceil((self.grid_side + 1) * self.spacing_um / self.mpp)


class _Layout:
    """Cell positions on the jittered grid, the table order, and the domain of any point of the tissue."""

    def __init__(self, spec: SlideSpec) -> None:
        rng = np.random.default_rng([spec.seed, 1])
        g = spec.grid_side
        self.spec = spec
        # Grid slot k = gy * g + gx holds a cell when k < n_obs (the tissue is a square with a ragged last row).
        jitter = rng.uniform(-0.35, 0.35, (g * g, 2)) * spec.spacing_um
        gx, gy = np.meshgrid(np.arange(g), np.arange(g))
        slots_um = np.stack([gx.ravel(), gy.ravel()], axis=1) * spec.spacing_um + spec.spacing_um + jitter
        self.slot_um = slots_um  # (g*g, 2) x, y; slots >= n_obs are empty
        self.order = rng.permutation(spec.n_obs)  # table row r holds slot order[r]
        n_seeds = 3 * spec.n_domains
        extent = (g + 1) * spec.spacing_um
        self.seeds_um = rng.uniform(0, extent, (n_seeds, 2))
        self.seed_domain = np.arange(n_seeds) % spec.n_domains
        self.nucleus_um = rng.uniform(2.5, 4.0, g * g)

    def domain_at(self, xy_um: np.ndarray) -> np.ndarray:
        """Domain of points ``(m, 2)`` in microns: that of the nearest Voronoi seed."""
        best = np.full(len(xy_um), np.inf)
        out = np.zeros(len(xy_um), dtype=np.int64)
        for s, d in zip(self.seeds_um, self.seed_domain, strict=True):
            dist = np.square(xy_um - s).sum(axis=1)
            closer = dist < best
            best[closer] = dist[closer]
            out[closer] = d
        return out

    def centers_um(self) -> np.ndarray:
        return self.slot_um[self.order]


def _counts(spec: SlideSpec, domains: np.ndarray, *, chunk: int = 50_000) -> sparse.csr_matrix:
    """Poisson counts: a domain-specific expression profile times a log-normal library size, built in row chunks."""
    rng = np.random.default_rng([spec.seed, 2])
    base = rng.gamma(0.6, 1.0, spec.n_genes)
    profiles = np.empty((spec.n_domains, spec.n_genes))
    for d in range(spec.n_domains):
        # Each domain over-expresses its own block of marker genes on top of a shared background.
        lift = np.ones(spec.n_genes)
        markers = rng.choice(spec.n_genes, size=max(spec.n_genes // 20, 2), replace=False)
        lift[markers] = rng.uniform(4.0, 12.0, len(markers))
        profiles[d] = base * lift * rng.lognormal(0.0, 0.3, spec.n_genes)
    profiles /= profiles.sum(axis=1, keepdims=True)
    parts = []
    for start in range(0, spec.n_obs, chunk):
        stop = min(start + chunk, spec.n_obs)
        library = rng.lognormal(math.log(spec.mean_counts), 0.5, stop - start)
        lam = profiles[domains[start:stop]] * library[:, None]
        parts.append(sparse.csr_matrix(rng.poisson(lam).astype(np.float32)))
    return sparse.vstack(parts, format="csr")


def _block_pixels(layout: _Layout, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """``(3, y1 - y0, x1 - x0)`` uint8 H&E-like pixels of one block, drawn from the cells that touch it."""
    spec = layout.spec
    mpp, g = spec.mpp, spec.grid_side
    h, w = y1 - y0, x1 - x0
    # Background tint: the domain of the tissue under each 16 px cell of the block.
    step = 16
    ys = (np.arange(y0, y1, step) + step / 2) * mpp
    xs = (np.arange(x0, x1, step) + step / 2) * mpp
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    dom = layout.domain_at(np.stack([gx.ravel(), gy.ravel()], axis=1)).reshape(gy.shape)
    shade = 1.0 - 0.06 * dom  # domains differ by a few grey levels of eosin
    shade = np.repeat(np.repeat(shade, step, axis=0), step, axis=1)[:h, :w]
    rng = np.random.default_rng([spec.seed, 3, y0, x0])
    img = _EOSIN[:, None, None] * shade[None] + rng.normal(0.0, 6.0, (1, h, w))
    # Nuclei of the grid slots whose discs can reach this block.
    reach = 5.0 / mpp
    gx_lo = max(int(((x0 - reach) * mpp - spec.spacing_um) // spec.spacing_um) - 1, 0)
    gx_hi = min(int(((x1 + reach) * mpp - spec.spacing_um) // spec.spacing_um) + 2, g)
    gy_lo = max(int(((y0 - reach) * mpp - spec.spacing_um) // spec.spacing_um) - 1, 0)
    gy_hi = min(int(((y1 + reach) * mpp - spec.spacing_um) // spec.spacing_um) + 2, g)
    for sy in range(gy_lo, gy_hi):
        for sx in range(gx_lo, gx_hi):
            slot = sy * g + sx
            if slot >= spec.n_obs:
                continue
            cx, cy = layout.slot_um[slot] / mpp
            r = layout.nucleus_um[slot] / mpp
            ly0, ly1 = max(int(cy - r) - y0, 0), min(int(cy + r) + 2 - y0, h)
            lx0, lx1 = max(int(cx - r) - x0, 0), min(int(cx + r) + 2 - x0, w)
            if ly0 >= ly1 or lx0 >= lx1:
                continue
            yy, xx = np.ogrid[ly0 + y0 : ly1 + y0, lx0 + x0 : lx1 + x0]
            inside = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
            patch = img[:, ly0:ly1, lx0:lx1]
            patch[:, inside] = _HEMATOXYLIN[:, None] * (0.9 + 0.2 * ((sx * 7 + sy * 13) % 5) / 4)
    return np.clip(img, 0, 255).astype(np.uint8)


def lazy_image(spec: SlideSpec, layout: _Layout | None = None) -> da.Array:
    """The slide's ``(3, y, x)`` uint8 image as a dask array whose blocks are drawn on demand."""
    layout = layout or _Layout(spec)
    side = spec.side_px
    chunks = ((3,), _chunks(side), _chunks(side))

    def draw(block_info=None) -> np.ndarray:
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return _block_pixels(layout, y0, y1, x0, x1)

    return da.map_blocks(draw, chunks=chunks, dtype=np.uint8, meta=np.empty((0, 0, 0), dtype=np.uint8))


def _chunks(side: int) -> tuple[int, ...]:
    full, rest = divmod(side, _BLOCK)
    return (_BLOCK,) * full + ((rest,) if rest else ())


def table(spec: SlideSpec, layout: _Layout | None = None) -> ad.AnnData:
    """The slide's cells x genes count table (CSR float32), positions in ``obsm["spatial"]`` (microns)."""
    layout = layout or _Layout(spec)
    centers = layout.centers_um()
    domains = layout.domain_at(centers)
    x = _counts(spec, domains)
    obs = pd.DataFrame(
        {"true_domain": pd.Categorical(domains.astype(str))},
        index=pd.Index([f"cell_{i}" for i in range(spec.n_obs)]),
    )
    var = pd.DataFrame(index=pd.Index([f"GENE{i:04d}" for i in range(spec.n_genes)]))
    return ad.AnnData(X=x, obs=obs, var=var, obsm={"spatial": centers})


def table_path(spec: SlideSpec, out_dir: str | Path) -> Path:
    """Where :func:`write_slide` puts the slide's table as an h5ad (counts, ``obsm["spatial"]`` in microns)."""
    return Path(out_dir) / f"{spec.name}.h5ad"


def write_slide(spec: SlideSpec, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the slide as a SpatialData zarr store (once; an existing complete store is reused).

    Parameters
    ----------
    spec
        What to generate.
    out_dir
        Folder of the store ``<out_dir>/<spec.name>.zarr``.
    overwrite
        Regenerate even when the store exists.

    Returns
    -------
    Path of the store.
    """
    import storm_sc as st

    path = Path(out_dir) / f"{spec.name}.zarr"
    done = path / ".storm_scale_complete"
    if done.exists() and not overwrite:
        return path
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    layout = _Layout(spec)
    adata = table(spec, layout)
    # The same table as a plain h5ad, for methods run in other environments (expression + positions only).
    adata.write_h5ad(table_path(spec, out_dir))
    centers_px = np.asarray(adata.obsm["spatial"]) / spec.mpp
    sdata = st.io.from_arrays(
        adata,
        centers_px,
        lazy_image(spec, layout),
        mpp=spec.mpp,
        spot_diameter_um=10.0,
        platform="generic",
        library_id="xeniumlike",
    )
    _LOG.info("built %s lazily in %.1f s; writing %s", spec.name, time.perf_counter() - start, path)
    sdata.write(path)
    done.write_text(f"{spec}\n")
    _LOG.info("wrote %s in %.1f s", path, time.perf_counter() - start)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-obs", type=int, required=True)
    parser.add_argument("--n-genes", type=int, default=400)
    parser.add_argument("--out", default="/tmp/storm_scale")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    path = write_slide(SlideSpec(n_obs=args.n_obs, n_genes=args.n_genes), args.out, overwrite=args.overwrite)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
