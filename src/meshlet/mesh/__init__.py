"""meshlet.mesh (see ARCHITECTURE.md for this package's one job)."""
