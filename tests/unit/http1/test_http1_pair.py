"""A client codec and a server codec joined by a fake link: what one sends the
other reads back as the same events (STYLE.md §7)."""

from __future__ import annotations

import pytest
from http1_support import merge_data

from meshlet.http1.adapter import Adapter
from meshlet.http1.codec import ClientCodec, ServerCodec
from meshlet.http1.events import (
    Data,
    EndOfMessage,
    Event,
    InformationalResponse,
    Passthrough,
    Request,
    Response,
)
from meshlet.http1.headers import strip_hop_by_hop


class Link:
    """Bytes written on one side arrive at the other, in pieces of ``step`` bytes."""

    def __init__(self, client: ClientCodec, server: ServerCodec, step: int) -> None:
        self.client = client
        self.server = server
        self.step = step

    def _carry(self, codec: ClientCodec | ServerCodec, wire: bytes) -> list[Event]:
        events: list[Event] = []
        if not self.step:
            events += codec.feed(wire) if wire else []
            return merge_data(events)
        for start in range(0, len(wire), self.step):
            events += codec.feed(wire[start : start + self.step])
        return merge_data(events)

    def to_server(self, *events: Event) -> list[Event]:
        return self._carry(self.server, b"".join(self.client.send(event) for event in events))

    def to_client(self, *events: Event) -> list[Event]:
        return self._carry(self.client, b"".join(self.server.send(event) for event in events))


@pytest.fixture
def link(adapter: Adapter, step: int) -> Link:
    return Link(ClientCodec(adapter=adapter), ServerCodec(adapter=adapter), step)


def test_keep_alive_exchanges_round_trip(link: Link) -> None:
    for number in range(3):
        request = Request(
            method=b"POST",
            target=b"/v1/completions/%d" % number,
            headers=[(b"host", b"m"), (b"content-length", b"7")],
        )
        assert link.to_server(request, Data(b"prompt!"), EndOfMessage()) == [
            request,
            Data(b"prompt!"),
            EndOfMessage(),
        ]
        response = Response(status=200, headers=[(b"content-length", b"2")], reason=b"OK")
        assert link.to_client(response, Data(b"ok"), EndOfMessage()) == [
            response,
            Data(b"ok"),
            EndOfMessage(),
        ]
        assert link.client.keep_alive
        assert link.server.keep_alive


def test_streamed_body_both_ways_with_trailers(link: Link) -> None:
    request = Request(
        method=b"PUT", target=b"/up", headers=[(b"host", b"m"), (b"transfer-encoding", b"chunked")]
    )
    received = link.to_server(
        request, Data(b"a" * 100), Data(b"b" * 3), EndOfMessage([(b"x-sum", b"103")])
    )
    assert received == [request, Data(b"a" * 100 + b"b" * 3), EndOfMessage([(b"x-sum", b"103")])]
    sse = Response(status=200, headers=[(b"content-type", b"text/event-stream")], reason=b"OK")
    received = link.to_client(sse, Data(b"data: tok\n\n"), EndOfMessage())
    assert received[0] == Response(
        status=200,
        headers=[(b"content-type", b"text/event-stream"), (b"transfer-encoding", b"chunked")],
        reason=b"OK",
    )
    assert received[1:] == [Data(b"data: tok\n\n"), EndOfMessage()]


def test_forwarding_a_chunked_request_through_a_proxy_hop(link: Link) -> None:
    """What a sidecar does: strip hop-by-hop fields, re-frame, forward."""
    incoming = Request(
        method=b"POST",
        target=b"/x",
        headers=[(b"host", b"m"), (b"transfer-encoding", b"chunked"), (b"te", b"trailers")],
    )
    forwarded = Request(
        method=incoming.method,
        target=incoming.target,
        headers=[*strip_hop_by_hop(incoming.headers), (b"transfer-encoding", b"chunked")],
    )
    received = link.to_server(forwarded, Data(b"body"), EndOfMessage())
    assert received[0] == Request(
        method=b"POST", target=b"/x", headers=[(b"host", b"m"), (b"transfer-encoding", b"chunked")]
    )
    assert received[1:] == [Data(b"body"), EndOfMessage()]


def test_expect_continue_round_trip(link: Link) -> None:
    request = Request(
        method=b"PUT",
        target=b"/m",
        headers=[(b"host", b"m"), (b"expect", b"100-continue"), (b"content-length", b"2")],
    )
    assert link.to_server(request) == [request]
    assert link.to_client(InformationalResponse(status=100, headers=[])) == [
        InformationalResponse(status=100, headers=[], reason=b"Continue")
    ]
    assert link.to_server(Data(b"ok"), EndOfMessage()) == [Data(b"ok"), EndOfMessage()]


def test_websocket_upgrade_round_trip(link: Link) -> None:
    request = Request(
        method=b"GET",
        target=b"/ws",
        headers=[(b"host", b"m"), (b"upgrade", b"websocket"), (b"connection", b"upgrade")],
    )
    assert link.to_server(request, EndOfMessage()) == [request, EndOfMessage()]
    switch = InformationalResponse(
        status=101, headers=[(b"upgrade", b"websocket"), (b"connection", b"upgrade")]
    )
    received = link.to_client(switch)
    assert [type(event) for event in received] == [InformationalResponse]
    assert link.client.passthrough
    assert link.server.passthrough
    frames = link.to_server(Passthrough(b"\x81\x03abc"))
    assert b"".join(e.data for e in frames if isinstance(e, Passthrough)) == b"\x81\x03abc"
