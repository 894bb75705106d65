"""ClientCodec: serializing requests and parsing responses, on both adapters."""

from __future__ import annotations

import pytest
from http1_support import feed

from meshlet.errors import LocalProtocolError, RemoteProtocolError
from meshlet.http1.adapter import Adapter
from meshlet.http1.codec import ClientCodec
from meshlet.http1.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    InformationalResponse,
    Passthrough,
    Request,
    Response,
)


def _client(
    adapter: Adapter, method: bytes = b"GET", headers: list[tuple[bytes, bytes]] | None = None
) -> ClientCodec:
    codec = ClientCodec(adapter=adapter)
    codec.send(Request(method=method, target=b"/", headers=headers or [(b"host", b"a")]))
    codec.send(EndOfMessage())
    return codec


def test_request_serialization(adapter: Adapter) -> None:
    codec = ClientCodec(adapter=adapter)
    head = codec.send(
        Request(
            method=b"POST",
            target=b"/v2/models/m/infer",
            headers=[(b"host", b"a"), (b"content-length", b"2")],
        )
    )
    assert head == (b"POST /v2/models/m/infer HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n")
    assert codec.send(Data(b"{}")) == b"{}"
    assert codec.send(EndOfMessage()) == b""


def test_request_without_framing_headers_has_no_body(adapter: Adapter) -> None:
    codec = ClientCodec(adapter=adapter)
    codec.send(Request(method=b"GET", target=b"/", headers=[(b"host", b"a")]))
    with pytest.raises(LocalProtocolError):
        codec.send(Data(b"x"))


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(Request(method=b"GE T", target=b"/", headers=[]), id="space-in-method"),
        pytest.param(Request(method=b"GET", target=b"/a b", headers=[]), id="space-in-target"),
        pytest.param(Request(method=b"GET", target=b"/\r\nX: y", headers=[]), id="crlf-in-target"),
        pytest.param(
            Request(method=b"GET", target=b"/", headers=[(b"x", b"1\nY: 2")]), id="lf-in-value"
        ),
    ],
)
def test_injection_in_request_heads_is_refused(adapter: Adapter, request_: Request) -> None:
    with pytest.raises(LocalProtocolError):
        ClientCodec(adapter=adapter).send(request_)


def test_content_length_response(adapter: Adapter, step: int) -> None:
    codec = _client(adapter)
    events = feed(codec, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello", step)
    assert events == [
        Response(status=200, headers=[(b"content-length", b"5"), (b"x", b"y")], reason=b"OK"),
        Data(b"hello"),
        EndOfMessage(),
    ]
    assert codec.keep_alive
    assert codec.idle


def test_chunked_streamed_response_arrives_piece_by_piece(adapter: Adapter) -> None:
    codec = _client(adapter)
    head = codec.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert [type(event) for event in head] == [Response]
    # Each token is delivered as soon as its chunk arrives, not at the end.
    assert codec.feed(b"7\r\ndata: 1\r\n") == [Data(b"data: 1")]
    assert codec.feed(b"7\r\ndata: 2\r\n") == [Data(b"data: 2")]
    assert codec.feed(b"0\r\n\r\n") == [EndOfMessage()]
    assert codec.idle


def test_read_until_close_response(adapter: Adapter, step: int) -> None:
    codec = _client(adapter)
    events = feed(codec, b"HTTP/1.1 200 OK\r\n\r\nstream until close", step, eof=True)
    assert events == [
        Response(status=200, headers=[], reason=b"OK"),
        Data(b"stream until close"),
        EndOfMessage(),
        ConnectionClosed(),
    ]
    assert not codec.keep_alive


def test_head_response_has_no_body_despite_content_length(adapter: Adapter, step: int) -> None:
    codec = _client(adapter, b"HEAD")
    events = feed(codec, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", step)
    assert events == [
        Response(status=200, headers=[(b"content-length", b"1234")], reason=b"OK"),
        EndOfMessage(),
    ]
    assert codec.idle
    assert codec.keep_alive


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(adapter: Adapter, status: int) -> None:
    codec = _client(adapter)
    events = codec.feed(b"HTTP/1.1 %d X\r\nContent-Length: 3\r\n\r\n" % status)
    assert [type(event) for event in events] == [Response, EndOfMessage]
    assert codec.idle


def test_informational_then_final_response(adapter: Adapter, step: int) -> None:
    codec = _client(adapter)
    data = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    )
    events = feed(codec, data, step)
    assert events == [
        InformationalResponse(status=100, headers=[], reason=b"Continue"),
        InformationalResponse(status=103, headers=[(b"link", b"</a>")], reason=b"Early Hints"),
        Response(status=200, headers=[(b"content-length", b"2")], reason=b"OK"),
        Data(b"ok"),
        EndOfMessage(),
    ]


def test_head_request_with_informational_first(adapter: Adapter) -> None:
    codec = _client(adapter, b"HEAD")
    events = codec.feed(
        b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"
    )
    assert [type(event) for event in events] == [InformationalResponse, Response, EndOfMessage]


def test_upgrade_101_switches_and_keeps_trailing_bytes(adapter: Adapter, step: int) -> None:
    codec = _client(
        adapter,
        headers=[(b"host", b"a"), (b"upgrade", b"websocket"), (b"connection", b"upgrade")],
    )
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    events = feed(codec, data + b"\x81\x02hi", step)
    assert isinstance(events[0], InformationalResponse)
    assert events[0].status == 101
    assert codec.passthrough
    # Bytes behind the head come back untouched: held, or passed through if fed later.
    tunnel = [event.data for event in events[1:] if isinstance(event, Passthrough)]
    assert len(tunnel) == len(events) - 1
    assert codec.take_trailing_data() + b"".join(tunnel) == b"\x81\x02hi"
    assert codec.feed(b"more") == [Passthrough(b"more")]


def test_101_without_an_upgrade_request_is_refused(adapter: Adapter) -> None:
    codec = _client(adapter)
    with pytest.raises(RemoteProtocolError) as info:
        codec.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
    assert info.value.status_hint == 502


def test_connect_2xx_switches(adapter: Adapter, step: int) -> None:
    codec = _client(adapter, b"CONNECT")
    events = feed(codec, b"HTTP/1.1 200 Connection Established\r\n\r\n\x16\x03", step)
    assert [type(event) for event in events[:2]] == [Response, EndOfMessage]
    assert codec.passthrough
    tunnel = b"".join(event.data for event in events[2:] if isinstance(event, Passthrough))
    assert codec.take_trailing_data() + tunnel == b"\x16\x03"


def test_connect_refused_is_an_ordinary_response(adapter: Adapter) -> None:
    codec = _client(adapter, b"CONNECT")
    events = codec.feed(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    assert [type(event) for event in events] == [Response, EndOfMessage]
    assert not codec.passthrough


def test_one_exchange_at_a_time_then_automatic_reset(adapter: Adapter) -> None:
    codec = _client(adapter)
    with pytest.raises(LocalProtocolError, match="one request at a time"):
        codec.send(Request(method=b"GET", target=b"/", headers=[(b"host", b"a")]))
    codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert codec.idle
    codec.send(Request(method=b"GET", target=b"/2", headers=[(b"host", b"a")]))
    codec.send(EndOfMessage())
    assert [type(e) for e in codec.feed(b"HTTP/1.1 204 No Content\r\n\r\n")] == [
        Response,
        EndOfMessage,
    ]


def test_unsolicited_bytes_make_the_connection_unusable(adapter: Adapter) -> None:
    codec = _client(adapter)
    events = codec.feed(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    assert [type(event) for event in events] == [Response, EndOfMessage]
    assert not codec.keep_alive
    with pytest.raises(LocalProtocolError, match="closing"):
        codec.send(Request(method=b"GET", target=b"/", headers=[(b"host", b"a")]))


def test_bytes_while_idle_are_unsolicited(adapter: Adapter) -> None:
    codec = _client(adapter)
    codec.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert codec.keep_alive
    # An idle upstream that speaks first (a 408 before closing, say) is not reusable.
    assert codec.feed(b"HTTP/1.1 408 Request Timeout\r\n\r\n") == []
    assert not codec.keep_alive


def test_connection_close_response_forbids_reuse(adapter: Adapter) -> None:
    codec = _client(adapter)
    codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert not codec.keep_alive
    with pytest.raises(LocalProtocolError, match="closing"):
        codec.send(Request(method=b"GET", target=b"/", headers=[(b"host", b"a")]))


def test_early_response_before_request_body_ended_forbids_reuse(adapter: Adapter) -> None:
    codec = ClientCodec(adapter=adapter)
    codec.send(
        Request(method=b"POST", target=b"/", headers=[(b"host", b"a"), (b"content-length", b"9")])
    )
    codec.feed(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    assert not codec.keep_alive


def test_eof_mid_response_is_a_remote_error(adapter: Adapter) -> None:
    codec = _client(adapter)
    codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(RemoteProtocolError) as info:
        codec.feed(b"")
    assert info.value.status_hint == 502


def test_eof_before_any_response_is_connection_closed(adapter: Adapter) -> None:
    codec = _client(adapter)
    assert codec.feed(b"") == [ConnectionClosed()]
    assert not codec.keep_alive


def test_expect_response_to_head_written_elsewhere(adapter: Adapter) -> None:
    codec = ClientCodec(adapter=adapter)
    codec.expect_response_to(b"HEAD")
    events = codec.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
    assert [type(event) for event in events] == [Response, EndOfMessage]
    assert codec.idle
    codec.expect_response_to(b"GET")
    with pytest.raises(LocalProtocolError, match="already expected"):
        codec.expect_response_to(b"GET")


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            id="cl-and-te",
        ),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", id="te-gzip"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", id="two-cl"
        ),
        pytest.param(b"HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n", id="status-below-100"),
        pytest.param(b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", id="version-2"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", id="obs-fold"),
    ],
)
def test_bad_responses_are_502(adapter: Adapter, response: bytes, step: int) -> None:
    codec = _client(adapter)
    with pytest.raises(RemoteProtocolError) as info:
        feed(codec, response, step)
    assert info.value.status_hint == 502
    assert not codec.keep_alive
