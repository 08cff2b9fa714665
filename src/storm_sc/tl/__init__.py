"""storm_sc.tl."""
