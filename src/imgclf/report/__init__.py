"""Reports: comparison of evaluated runs (tables and figures)."""
