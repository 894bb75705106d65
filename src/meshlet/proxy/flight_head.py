"""What a ``Flight`` sends upstream: the request head the plan asks for (header
operations, authority, the model header), the InferenceModel's target model
written into the body or the KServe v2 path, and the mirrors' shadow copies.

``flight.Flight`` decides when; this mixin builds the bytes (the state lives in
the slots ``flight_retry._FlightState`` declares).
"""

from __future__ import annotations

from meshlet.config.routing import HeaderOps
from meshlet.proxy.exchange import CHUNKED, LENGTH, Exchange
from meshlet.proxy.flight_retry import _FlightState
from meshlet.proxy.heads import request_head
from meshlet.traffic.match import MODEL_HEADER
from meshlet.traffic.model_name import path_with_model, rewrite_model
from meshlet.traffic.retry import RETRY_BUFFER_BYTES
from meshlet.traffic.router import ForwardPlan

__all__ = ["ForwardHeads", "apply_ops", "declared_length"]

_MODEL_HEADER = MODEL_HEADER.encode("ascii")


def apply_ops(headers: list[tuple[bytes, bytes]], ops: HeaderOps) -> list[tuple[bytes, bytes]]:
    """``headers`` after a route's remove, set and add operations."""
    if ops.remove or ops.set:
        drop = {n.encode("latin-1") for n in ops.remove} | {n.encode("latin-1") for n, _ in ops.set}
        headers = [h for h in headers if h[0] not in drop]
    for name, value in (*ops.set, *ops.add):
        headers.append((name.encode("latin-1"), value.encode("latin-1")))
    return headers


def declared_length(ex: Exchange) -> int:
    """The request's Content-Length, or -1."""
    if ex.framing == CHUNKED:
        return -1
    for name, value in ex.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


class ForwardHeads(_FlightState):
    """The head, the target model and the mirror copies of one flight."""

    __slots__ = ()

    def _retarget(self, plan: ForwardPlan, model: str | None) -> tuple[int, str]:
        """Send the InferenceModel's target model instead of the one asked for:
        in the body's ``"model"`` when the scanner found it there, else in a
        KServe v2 path. Returns the body's change in length and the path."""
        inference = plan.inference
        target = None if inference is None else inference.target_model
        if target is None or model is None or target == model:
            return 0, plan.path
        if self.model_span is not None:  # named in the body
            return self._rewrite_model(target), plan.path
        renamed = path_with_model(plan.path, model, target)
        if renamed is None:
            return 0, plan.path
        self.sent_model = target
        return 0, renamed

    def _rewrite_model(self, target: str) -> int:
        """Write the InferenceModel's chosen ``target`` into the body's ``"model"``
        (Gateway API Inference Extension: the model server must see the target
        adapter or version, not the name the client asked for). Only the bytes the
        scanner held anyway (<= 64 KiB and one chunk) are touched; the rest streams
        on. Returns the change in body length, for Content-Length."""
        ex, span = self.ex, self.model_span
        parts = ex.pending
        if span is None or parts is None:
            return 0
        body = b"".join(parts)
        new = rewrite_model(body, span, target)
        ex.pending = [new]
        ex.pending_bytes = len(new)
        self.sent_model = target
        if not self.buffer_over:  # the replay buffer held the same bytes: replay the new
            if len(new) <= RETRY_BUFFER_BYTES:
                self.buffer, self.buffer_bytes = [new], len(new)
            else:
                self.buffer_over, self.buffer = True, []
        return len(new) - len(body)

    def _head(
        self, plan: ForwardPlan, model: str | None, body_delta: int = 0, path: str | None = None
    ) -> bytes:
        ex = self.ex
        headers = apply_ops(list(ex.headers), plan.request_headers)
        if body_delta and ex.framing == LENGTH:  # the body's model was rewritten
            length = b"%d" % (declared_length(ex) + body_delta)
            headers = [(n, length if n == b"content-length" else v) for n, v in headers]
        if plan.authority is not None:
            headers = [h for h in headers if h[0] != b"host"]
            headers.append((b"host", plan.authority.encode("latin-1")))
        extra = self.extra
        if model is not None:  # what routing used, not what the client may have claimed
            headers = [h for h in headers if h[0] != _MODEL_HEADER]
            extra = [*extra, _MODEL_HEADER + b": " + model.encode("latin-1")]
        return request_head(
            ex.method,
            (plan.path if path is None else path).encode("latin-1"),
            headers,
            connection=ex.connection,
            extra=extra,
            chunked=ex.framing == CHUNKED,
            upgrade=ex.upgrade,
        )

    def _mirror(self) -> None:
        plan = self.plan
        if self.mirrored or plan is None or not plan.mirrors:
            return
        self.mirrored = True
        if self.buffer_over:
            self.traffic.listener.metrics.upstream_error("mirror_skipped_body")
            return
        for dest in plan.mirrors:
            svc = self.traffic.service(dest.host)
            if svc is None:
                continue
            labels = self.traffic.router.subset_labels(dest.host, dest.subset)
            pools = [p for p in svc.endpoints if p.key.has_labels(labels)]
            if not pools:
                continue
            pool = pools[int(self.traffic.rng.random() * len(pools)) % len(pools)]
            self.traffic.mirrors.send(pool, self._mirror_head(plan, dest.host), self.buffer)

    def _mirror_head(self, plan: ForwardPlan, host: str) -> bytes:
        """Istio's shadow request: Host gets ``-shadow``, the body is re-framed by
        length, and the connection closes after the response."""
        ex = self.ex
        authority = plan.authority or ex.host.decode("latin-1") or host
        headers = [h for h in ex.headers if h[0] not in (b"host", b"content-length")]
        headers = apply_ops(headers, plan.request_headers)
        extra = [
            *self.extra,
            b"host: " + authority.encode("latin-1") + b"-shadow",
            b"content-length: %d" % self.buffer_bytes,
            b"connection: close",
        ]
        return request_head(
            ex.method,
            ex.head.split(b" ", 2)[1],  # the target sent upstream (model path rewritten)
            headers,
            connection=ex.connection,
            extra=extra,
            chunked=False,
            upgrade=None,
        )
