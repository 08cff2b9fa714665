"""storm_sc.pp."""
