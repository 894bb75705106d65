"""Head rewriting, synthetic responses, host matching and request ids."""

from __future__ import annotations

import pytest

from meshlet.errors import NoRoute, RemoteProtocolError, UpstreamConnectError, UpstreamTimeout
from meshlet.proxy import rescue
from meshlet.proxy.exchange import RequestIds
from meshlet.proxy.heads import connection_tokens, request_head, response_head
from meshlet.proxy.outbound import split_host


def test_request_head_drops_hop_by_hop_and_named_fields() -> None:
    head = request_head(
        b"POST",
        b"/v1/chat",
        [
            (b"host", b"svc"),
            (b"keep-alive", b"5"),
            (b"x-secret-hop", b"1"),
            (b"te", b"trailers"),
            (b"x-keep", b"yes"),
            (b"proxy-authorization", b"Basic x"),
        ],
        connection=b"keep-alive, X-Secret-Hop",
        extra=[b"x-request-id: r1"],
        chunked=True,
        upgrade=None,
    )
    assert head == (
        b"POST /v1/chat HTTP/1.1\r\nhost: svc\r\nx-keep: yes\r\n"
        b"x-request-id: r1\r\ntransfer-encoding: chunked\r\n\r\n"
    )


def test_request_head_keeps_upgrade_when_asked() -> None:
    head = request_head(
        b"GET",
        b"/ws",
        [(b"host", b"svc")],
        connection=b"upgrade",
        extra=[],
        chunked=False,
        upgrade=b"websocket",
    )
    assert b"connection: upgrade\r\nupgrade: websocket\r\n" in head


def test_response_head_framing_and_close() -> None:
    head = response_head(
        200,
        b"OK",
        [(b"content-type", b"text/event-stream")],
        connection=None,
        chunked=True,
        close=True,
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    assert response_head(204, b"", [], connection=None, chunked=False, close=False) == (
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )


def test_connection_tokens() -> None:
    assert connection_tokens(b"Keep-Alive, Upgrade ,,x") == frozenset(
        {b"keep-alive", b"upgrade", b"x"}
    )
    assert connection_tokens(None) == frozenset()


@pytest.mark.parametrize(
    ("exc", "status", "error"),
    [
        (NoRoute("no service"), 502, "no_route"),
        (UpstreamConnectError("refused"), 503, "upstream_connect"),
        (UpstreamTimeout("slow"), 504, "upstream_timeout"),
        (RemoteProtocolError("bad", status_hint=431), 431, "bad_request"),
    ],
)
def test_rescue_maps_errors(exc: Exception, status: int, error: str) -> None:
    r = rescue.from_error(exc)  # type: ignore[arg-type]
    assert r.status == status
    assert r.error == error
    data = rescue.render(r, request_id=b"abc")
    head, body = data.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert b"x-meshlet-error: " + error.encode() in head
    assert b"x-request-id: abc" in head
    assert body.endswith(b"\n")
    assert body.count(b"\n") == 1
    assert b"content-length: %d" % len(body) in head


def test_rescue_head_only_and_close() -> None:
    r = rescue.rescue(400, "bad_request", "DPE", "line one\nline two")
    data = rescue.render(r, close=True, head_only=True)
    assert data.endswith(b"\r\n\r\n")
    assert b"connection: close" in data
    assert b"content-length: 18" in data  # the body a GET would have had, on one line


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        (b"svc", b"svc"),
        (b"svc:8080", b"svc"),
        (b"SVC.ns:80", b"svc.ns"),
        (b"[::1]:80", b"::1"),
        (b"[fe80::1]", b"fe80::1"),
    ],
)
def test_split_host(authority: bytes, host: bytes) -> None:
    assert split_host(authority) == host


def test_request_ids_unique_and_cheap_shape() -> None:
    a, b = RequestIds(), RequestIds()
    ids = {a.next() for _ in range(1000)} | {b.next() for _ in range(1000)}
    assert len(ids) == 2000
    first = a.next()
    assert first.count(b"-") == 1
    assert len(first.split(b"-")[0]) == 16
