"""Snapshot versions depend on content only: not on the order proxies registered
in, nor on heartbeats; and any endpoint change shows in the version."""

from __future__ import annotations

import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet.control.registry import Registry
from meshlet.control.snapshot import compile_snapshot
from meshlet.control.store import MeshSource, load_config_dir

MESH = """\
trust_domain: example.org
services:
  a:
    workloads:
      - {name: a1, command: ["true"]}
      - {name: a2, command: ["true"]}
  b:
    workloads:
      - {name: b1, command: ["true"]}
clients:
  c:
    command: ["true"]
"""

WORKLOADS = ("a1", "a2", "b1", "c")
Entry = tuple[str, str, int | None]  # (proxy id, workload, port or None)

entries = st.lists(
    st.tuples(
        st.sampled_from(WORKLOADS),
        st.one_of(st.none(), st.integers(min_value=1024, max_value=1100)),
    ),
    max_size=8,
).map(lambda xs: [(f"p{i}", w, port) for i, (w, port) in enumerate(xs)])


@pytest.fixture(scope="module")
def src() -> Iterator[MeshSource]:
    """Loaded once: each example only builds registries and compiles."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "mesh.yaml").write_text(textwrap.dedent(MESH))
        yield load_config_dir(Path(tmp))


def registry_of(items: list[Entry], now_s: float = 0.0) -> Registry:
    registry = Registry()
    for proxy_id, workload, port in items:
        registry.heartbeat(
            proxy_id=proxy_id,
            workload=workload,
            spiffe_id=f"spiffe://example.org/ns/default/sa/{workload}",
            address=None if port is None else f"127.0.0.1:{port}",
            cert_not_after=1e12,
            now_s=now_s,
        )
    return registry


def versions(src: MeshSource, registry: Registry) -> dict[str, str]:
    out = {}
    for w in WORKLOADS:
        snap = compile_snapshot(src, registry, w)
        assert snap is not None
        out[w] = snap.version
    return out


@settings(max_examples=60, deadline=None)
@given(items=entries, data=st.data())
def test_version_ignores_registration_order_and_heartbeats(
    src: MeshSource, items: list[Entry], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(items))
    first = versions(src, registry_of(items))
    again = registry_of(shuffled, now_s=5.0)
    assert versions(src, again) == first
    for proxy_id, workload, port in items:  # heartbeats alone change nothing
        again.heartbeat(
            proxy_id=proxy_id,
            workload=workload,
            spiffe_id=f"spiffe://example.org/ns/default/sa/{workload}",
            address=None if port is None else f"127.0.0.1:{port}",
            cert_not_after=2e12,
            now_s=9.0,
        )
    assert versions(src, again) == first


@settings(max_examples=60, deadline=None)
@given(items=entries, port=st.integers(min_value=2000, max_value=2100))
def test_a_new_serving_endpoint_changes_every_callers_version(
    src: MeshSource, items: list[Entry], port: int
) -> None:
    before = versions(src, registry_of(items))
    after = versions(src, registry_of([*items, ("new", "b1", port)]))
    assert all(before[w] != after[w] for w in WORKLOADS)
