"""meshlet: a small, secure-by-default service mesh for AI inference workloads."""

__version__ = "0.1.0"
