"""ServerCodec: parsing requests and serializing responses, on both adapters."""

from __future__ import annotations

import pytest
from http1_support import feed

from meshlet.errors import LocalProtocolError, RemoteProtocolError
from meshlet.http1.adapter import Adapter
from meshlet.http1.codec import ServerCodec
from meshlet.http1.events import (
    ConnectionClosed,
    Data,
    EndOfMessage,
    InformationalResponse,
    Passthrough,
    Request,
    Response,
)

GET = b"GET /v1/models?x=1 HTTP/1.1\r\nHost: api\r\nUser-Agent: t\r\n\r\n"


def test_parses_a_request_head_with_lowercased_names(adapter: Adapter, step: int) -> None:
    codec = ServerCodec(adapter=adapter)
    events = feed(codec, GET, step)
    assert events == [
        Request(
            method=b"GET",
            target=b"/v1/models?x=1",
            headers=[(b"host", b"api"), (b"user-agent", b"t")],
        ),
        EndOfMessage(),
    ]
    assert codec.keep_alive


def test_content_length_body(adapter: Adapter, step: int) -> None:
    data = b"POST /infer HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    events = feed(ServerCodec(adapter=adapter), data, step)
    assert events[1:] == [Data(b"hello world"), EndOfMessage()]


def test_chunked_body_with_extensions_and_trailers(adapter: Adapter, step: int) -> None:
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;name="a;b"\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Checksum: abc \r\n\r\n'
    )
    events = feed(ServerCodec(adapter=adapter), data, step)
    assert events[1:] == [Data(b"hello world"), EndOfMessage([(b"x-checksum", b"abc")])]


def test_pipelined_requests_come_out_in_order_from_one_feed(adapter: Adapter) -> None:
    data = (
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
        b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    codec = ServerCodec(adapter=adapter)
    events = codec.feed(data)
    targets = [event.target for event in events if isinstance(event, Request)]
    assert targets == [b"/1", b"/2", b"/3"]
    assert sum(isinstance(event, EndOfMessage) for event in events) == 3
    # Answered one after another, in order.
    for _ in range(3):
        codec.send(Response(status=200, headers=[(b"content-length", b"0")]))
        codec.send(EndOfMessage())
    assert codec.keep_alive
    with pytest.raises(LocalProtocolError, match="no request"):
        codec.send(Response(status=200, headers=[]))


def test_http10_without_keep_alive_closes_and_ignores_what_follows(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    events = codec.feed(b"GET / HTTP/1.0\r\n\r\nGET /ignored HTTP/1.0\r\n\r\n")
    assert [type(event) for event in events] == [Request, EndOfMessage]
    assert not codec.keep_alive
    out = codec.send(Response(status=200, headers=[]))
    # An HTTP/1.0 client cannot read chunked: the body ends with the connection.
    assert b"transfer-encoding" not in out.lower()
    assert codec.send(Data(b"abc")) == b"abc"
    assert codec.send(EndOfMessage()) == b""


def test_connection_close_request_gets_connection_close_response(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert not codec.keep_alive
    out = codec.send(Response(status=200, headers=[(b"content-length", b"0")]))
    assert out == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def test_http10_keep_alive_is_honoured(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    out = codec.send(Response(status=200, headers=[(b"content-length", b"2")]))
    assert b"connection: keep-alive\r\n" in out
    codec.send(Data(b"ok"))
    codec.send(EndOfMessage())
    assert codec.keep_alive


def test_eof_between_requests_is_connection_closed(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    events = feed(codec, GET, eof=True)
    assert events[-1] == ConnectionClosed()
    assert not codec.keep_alive


def test_eof_mid_request_is_a_remote_error(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(RemoteProtocolError) as info:
        codec.feed(b"")
    assert info.value.status_hint == 400


def test_response_without_framing_headers_is_chunked_for_http11(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(GET)
    head = codec.send(Response(status=200, headers=[(b"content-type", b"text/event-stream")]))
    assert head.endswith(b"transfer-encoding: chunked\r\n\r\n")
    assert codec.send(Data(b"data: 1\n\n")) == b"9\r\ndata: 1\n\n\r\n"
    assert codec.send(Data(b"")) == b""
    assert codec.send(EndOfMessage([(b"x-tokens", b"7")])) == b"0\r\nx-tokens: 7\r\n\r\n"
    assert codec.keep_alive


def test_head_response_keeps_content_length_but_sends_no_body(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    head = codec.send(Response(status=200, headers=[(b"content-length", b"100")]))
    assert b"content-length: 100" in head
    with pytest.raises(LocalProtocolError):
        codec.send(Data(b"x"))
    assert codec.send(EndOfMessage()) == b""


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        pytest.param(
            [(b"content-length", b"1"), (b"transfer-encoding", b"chunked")],
            "together",
            id="cl-and-te",
        ),
        pytest.param([(b"transfer-encoding", b"gzip")], "Transfer-Encoding", id="te-gzip"),
        pytest.param(
            [(b"content-length", b"1"), (b"content-length", b"1")], "Content-Length", id="two-cl"
        ),
        pytest.param([(b"content-length", b"-1")], "Content-Length", id="negative-cl"),
        pytest.param([(b"x", b"a\r\nInjected: yes")], "CR, LF", id="crlf-in-value"),
        pytest.param([(b"bad name", b"v")], "header name", id="space-in-name"),
        pytest.param([(b"", b"v")], "header name", id="empty-name"),
        pytest.param([(b"x", b"a\x00b")], "NUL", id="nul-in-value"),
    ],
)
def test_illegal_response_heads_are_refused(
    adapter: Adapter, headers: list[tuple[bytes, bytes]], message: str
) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(GET)
    with pytest.raises(LocalProtocolError, match=message):
        codec.send(Response(status=200, headers=headers))


def test_body_must_match_content_length(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(GET + GET)
    codec.send(Response(status=200, headers=[(b"content-length", b"3")]))
    with pytest.raises(LocalProtocolError, match="longer"):
        codec.send(Data(b"abcd"))
    codec = ServerCodec(adapter=adapter)
    codec.feed(GET)
    codec.send(Response(status=200, headers=[(b"content-length", b"3")]))
    codec.send(Data(b"ab"))
    with pytest.raises(LocalProtocolError, match="short"):
        codec.send(EndOfMessage())


def test_204_and_304_have_no_body(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(GET + GET)
    head = codec.send(Response(status=204, headers=[]))
    assert b"transfer-encoding" not in head
    codec.send(EndOfMessage())
    codec.send(Response(status=304, headers=[(b"etag", b'"x"')]))
    with pytest.raises(LocalProtocolError):
        codec.send(Data(b"x"))


def test_response_before_the_request_body_ended_forbids_reuse(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npartial")
    codec.send(Response(status=413, headers=[(b"content-length", b"0")]))
    codec.send(EndOfMessage())
    assert not codec.keep_alive


def test_after_a_parse_error_one_error_response_can_be_sent(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    with pytest.raises(RemoteProtocolError) as info:
        codec.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n")
    assert info.value.status_hint == 400
    head = codec.send(Response(status=400, headers=[(b"content-length", b"0")]))
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in head
    assert not codec.keep_alive


def test_expect_100_continue_flow(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    events = codec.feed(
        b"PUT /m HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    )
    assert events == [
        Request(
            method=b"PUT",
            target=b"/m",
            headers=[(b"host", b"a"), (b"expect", b"100-continue"), (b"content-length", b"4")],
        )
    ]
    assert codec.send(InformationalResponse(status=100, headers=[])) == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    assert feed(codec, b"body") == [Data(b"body"), EndOfMessage()]


UPGRADE = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"


def test_upgrade_switches_to_passthrough_after_101(adapter: Adapter, step: int) -> None:
    codec = ServerCodec(adapter=adapter)
    events = feed(codec, UPGRADE + b"\x81\x05early", step)
    assert [type(event) for event in events] == [Request, EndOfMessage]
    assert not codec.passthrough
    codec.send(
        InformationalResponse(
            status=101, headers=[(b"upgrade", b"websocket"), (b"connection", b"upgrade")]
        )
    )
    assert codec.passthrough
    assert codec.take_trailing_data() == b"\x81\x05early"
    assert codec.feed(b"\x81\x01x") == [Passthrough(b"\x81\x01x")]
    assert codec.send(Passthrough(b"raw")) == b"raw"
    assert codec.feed(b"") == [ConnectionClosed()]


def test_refused_upgrade_resumes_http_parsing(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    events = codec.feed(UPGRADE + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [type(event) for event in events] == [Request, EndOfMessage]
    codec.send(Response(status=426, headers=[(b"content-length", b"0")]))
    codec.send(EndOfMessage())
    assert not codec.passthrough
    events = codec.resume()
    assert [event.target for event in events if isinstance(event, Request)] == [b"/next"]


def test_connect_tunnel(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    events = codec.feed(b"CONNECT model:443 HTTP/1.1\r\nHost: model:443\r\n\r\n\x16\x03\x01")
    assert events[0] == Request(
        method=b"CONNECT", target=b"model:443", headers=[(b"host", b"model:443")]
    )
    head = codec.send(Response(status=200, headers=[]))
    assert head == b"HTTP/1.1 200 OK\r\n\r\n"
    assert codec.passthrough
    assert codec.take_trailing_data() == b"\x16\x03\x01"


def test_101_without_upgrade_request_is_refused(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(GET)
    with pytest.raises(LocalProtocolError, match="101"):
        codec.send(InformationalResponse(status=101, headers=[]))


def test_events_in_the_wrong_order_are_refused(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    with pytest.raises(LocalProtocolError):
        codec.send(Data(b"x"))
    with pytest.raises(LocalProtocolError):
        codec.send(EndOfMessage())
    with pytest.raises(LocalProtocolError):
        codec.send(Passthrough(b"x"))
    codec.feed(GET)
    with pytest.raises(LocalProtocolError):
        codec.send(Request(method=b"GET", target=b"/", headers=[]))
    codec.send(Response(status=200, headers=[]))
    with pytest.raises(LocalProtocolError):
        codec.send(Response(status=200, headers=[]))
    with pytest.raises(LocalProtocolError):
        codec.send(InformationalResponse(status=100, headers=[]))


def test_nothing_is_answered_after_a_closing_response(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    codec.feed(GET + GET)
    codec.send(Response(status=200, headers=[(b"content-length", b"0"), (b"connection", b"close")]))
    codec.send(EndOfMessage())
    assert not codec.keep_alive
    with pytest.raises(LocalProtocolError, match="closing"):
        codec.send(Response(status=200, headers=[]))


def test_a_parse_error_forgets_the_requests_of_that_feed(adapter: Adapter) -> None:
    codec = ServerCodec(adapter=adapter)
    with pytest.raises(RemoteProtocolError):
        codec.feed(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n")
    # The error response answers no HEAD the driver never saw: it may carry a body.
    codec.send(Response(status=400, headers=[(b"content-length", b"3")]))
    assert codec.send(Data(b"bad")) == b"bad"
    codec.send(EndOfMessage())
    assert not codec.keep_alive
