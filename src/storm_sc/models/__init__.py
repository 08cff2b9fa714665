"""storm_sc.models."""
