"""meshlet.identity (see ARCHITECTURE.md for this package's one job)."""
