"""storm_sc.pl."""
