"""How much of a message head the codec accepts before refusing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Size limits on a message head; going over one is the peer's fault.

    A head over ``max_header_bytes`` or with more than ``max_headers`` fields is
    refused with status hint 431, a request-target over ``max_target_bytes`` with
    414 (RFC 9110 §15.5.15). Header bytes count names plus values, as Envoy's
    header map byte size does, so the same YAML limit means the same thing here.
    """

    # Envoy's defaults: max_request_headers_kb = 60 and max_headers_count = 100,
    # so a request that passes an Envoy sidecar also passes a meshlet one.
    max_header_bytes: int = 60 * 1024
    max_headers: int = 100
    # nginx refuses a request line over large_client_header_buffers (8 KiB) with
    # 414; long enough for any real REST/inference URL, short enough to bound memory.
    max_target_bytes: int = 8 * 1024

    @property
    def max_head_bytes(self) -> int:
        """Raw bytes an unfinished head may occupy: a memory guard against a head
        that never ends, generous enough that the precise checks fire first."""
        return self.max_target_bytes + self.max_header_bytes + 4 * self.max_headers + 1024


DEFAULT_LIMITS = Limits()
