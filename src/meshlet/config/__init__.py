"""Configuration: YAML sources with line numbers, the typed model, and snapshots.

Everything a user writes (mesh.yaml, proxy bootstrap, Istio and Gateway API
documents) is read here once, checked strictly, and turned into frozen runtime
types. Errors name the file and line.
"""
