"""meshlet.proxy (see ARCHITECTURE.md for this package's one job)."""
