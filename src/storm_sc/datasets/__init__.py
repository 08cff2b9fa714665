"""storm_sc.datasets."""
