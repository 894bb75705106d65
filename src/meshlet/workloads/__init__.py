"""The reference inference workload: a small model server for demos, tests and benchmarks.

It stands alone (import-linter forbids it from importing the proxy, control plane or
mesh runner) so that what the mesh carries is an ordinary app, exactly as a user's
model server would be.
"""
