"""What a ClientCodec sends a ServerCodec reads back unchanged, and the other
way round, for random heads and bodies cut into random pieces."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlet.http1.codec import ClientCodec, ServerCodec
from meshlet.http1.events import Data, EndOfMessage, Event, Request, Response

NAME = (
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~", min_size=1, max_size=10)
    .map(str.encode)
    .filter(
        lambda n: (
            n
            not in {
                b"content-length",
                b"transfer-encoding",
                b"connection",
                b"host",
                b"upgrade",
                b"te",
                b"trailer",
                b"keep-alive",
            }
        )
    )
)
VALUE = st.binary(max_size=16).map(lambda raw: bytes(b for b in raw if b >= 0x21 and b != 0x7F))
HEADERS = st.lists(st.tuples(NAME, VALUE), max_size=6)
PIECES = st.lists(st.binary(min_size=1, max_size=30), max_size=5)


def _body(events: list[Event]) -> bytes:
    return b"".join(event.data for event in events if isinstance(event, Data))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    method=st.sampled_from([b"POST", b"PUT", b"PATCH"]),
    path=st.text(alphabet="abc/._~-?=&", max_size=20).map(lambda p: ("/" + p).encode()),
    headers=HEADERS,
    pieces=PIECES,
    chunked=st.booleans(),
    trailers=HEADERS,
    step=st.integers(1, 64),
)
def test_request_round_trip(
    method: bytes,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
    pieces: list[bytes],
    chunked: bool,
    trailers: list[tuple[bytes, bytes]],
    step: int,
) -> None:
    body = b"".join(pieces)
    framing = (
        (b"transfer-encoding", b"chunked") if chunked else (b"content-length", b"%d" % len(body))
    )
    request = Request(method=method, target=path, headers=[(b"host", b"m"), *headers, framing])
    client, server = ClientCodec(), ServerCodec()
    end = EndOfMessage(trailers if chunked and trailers else None)
    wire = client.send(request) + b"".join(client.send(Data(p)) for p in pieces)
    wire += client.send(end)
    events: list[Event] = []
    for start in range(0, len(wire), step):
        events += server.feed(wire[start : start + step])
    assert events[0] == request
    assert _body(events) == body
    assert events[-1] == end
    assert server.keep_alive


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    status=st.sampled_from([200, 201, 404, 500, 503]),
    headers=HEADERS,
    pieces=PIECES,
    length_known=st.booleans(),
    step=st.integers(1, 64),
)
def test_response_round_trip(
    status: int,
    headers: list[tuple[bytes, bytes]],
    pieces: list[bytes],
    length_known: bool,
    step: int,
) -> None:
    body = b"".join(pieces)
    client, server = ClientCodec(), ServerCodec()
    server.feed(client.send(Request(method=b"GET", target=b"/", headers=[(b"host", b"m")])))
    client.send(EndOfMessage())
    extra = [(b"content-length", b"%d" % len(body))] if length_known else []
    wire = server.send(Response(status=status, headers=[*headers, *extra]))
    wire += b"".join(server.send(Data(p)) for p in pieces) + server.send(EndOfMessage())
    events: list[Event] = []
    for start in range(0, len(wire), step):
        events += client.feed(wire[start : start + step])
    head = events[0]
    assert isinstance(head, Response)
    assert head.status == status
    # Without a length the server framed the body chunked and said so.
    framing = extra or [(b"transfer-encoding", b"chunked")]
    assert head.headers == [*headers, *framing]
    assert _body(events) == body
    assert events[-1] == EndOfMessage()
    assert client.idle
    assert client.keep_alive
