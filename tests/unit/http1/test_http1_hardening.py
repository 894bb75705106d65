"""Request smuggling and resource limits: refused with the right status hint,
whichever adapter parses and however the bytes are split."""

from __future__ import annotations

import pytest
from http1_support import feed

from meshlet.errors import RemoteProtocolError
from meshlet.http1.adapter import Adapter
from meshlet.http1.codec import ServerCodec
from meshlet.http1.limits import Limits

H = b"Host: a\r\n"

SMUGGLING = [
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        id="cl-then-te",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
        b"Content-Length: 3\r\n\r\n0\r\n\r\n",
        id="te-then-cl",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        id="duplicate-equal-cl",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        id="differing-cl",
    ),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc", id="cl-list"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", id="cl-sign"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", id="cl-hex"),
    pytest.param(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: \r\n\r\n", id="cl-empty"),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        id="te-gzip-chunked",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        id="te-chunked-not-final",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        id="te-twice",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        id="te-lookalike",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        id="space-before-colon",
    ),
    pytest.param(
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="te-in-http10"
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
        id="chunk-size-space",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
        id="chunk-size-0x",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        id="chunk-size-negative",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        id="chunk-size-overflow",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;\r\nabc\r\n0\r\n\r\n",
        id="chunk-ext-empty",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3;a b\r\nabc\r\n0\r\n\r\n",
        id="chunk-ext-space",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b'3;a="b\r\nabc\r\n0\r\n\r\n',
        id="chunk-ext-open-quote",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        id="chunk-data-overrun",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        id="chunk-size-bare-lf",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n",
        id="trailer-obs-fold",
    ),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n b\r\n\r\n", id="obs-fold-space"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"X: a\r\n\tb\r\n\r\n", id="obs-fold-tab"),
    pytest.param(b"GET / HTTP/1.1\n" + H + b"\r\n", id="bare-lf-request-line"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", id="bare-lf-header"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n\n", id="bare-lf-end-of-head"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", id="bare-cr"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"X\x00: y\r\n\r\n", id="nul-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n", id="nul-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"X: a\x7fb\r\n\r\n", id="del-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"X(y): z\r\n\r\n", id="non-token-name"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b": z\r\n\r\n", id="empty-name"),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"NoColon\r\n\r\n", id="no-colon"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
    pytest.param(b"GET /a\x00 HTTP/1.1\r\n" + H + b"\r\n", id="nul-in-target"),
    pytest.param(b"GET /\x80 HTTP/1.1\r\n" + H + b"\r\n", id="non-ascii-target"),
    pytest.param(b"FOO / HTTP/1.1\r\n" + H + b"\r\n", id="unknown-method"),
    pytest.param(b"get / HTTP/1.1\r\n" + H + b"\r\n", id="lowercase-method"),
    pytest.param(b"GET / HTTP/1.2\r\n" + H + b"\r\n", id="version-1.2"),
    pytest.param(b"GET / HTTP/2.0\r\n" + H + b"\r\n", id="version-2.0"),
    pytest.param(b"GET / HTTP/0.9\r\n" + H + b"\r\n", id="version-0.9"),
    pytest.param(b"GET / http/1.1\r\n" + H + b"\r\n", id="lowercase-http"),
    pytest.param(
        b"CONNECT a:1 HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n\r\nabc", id="connect-with-body"
    ),
    pytest.param(b"GET / HTTP/1.1\r\n" + H + b"\r\nGARBAGE\r\n\r\n", id="garbage-after"),
]


@pytest.mark.parametrize("data", SMUGGLING)
def test_smuggling_attempts_are_400_and_close(adapter: Adapter, step: int, data: bytes) -> None:
    codec = ServerCodec(adapter=adapter)
    with pytest.raises(RemoteProtocolError) as info:
        feed(codec, data, step, eof=True)
    assert info.value.status_hint == 400
    assert not codec.keep_alive


def test_a_good_request_before_garbage_is_not_smuggled_past(adapter: Adapter) -> None:
    """The classic CL.TE split: the second request must never appear as one."""
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    codec = ServerCodec(adapter=adapter)
    seen: list[bytes] = []
    failed = False
    for index in range(len(data)):
        try:
            events = codec.feed(data[index : index + 1])
        except RemoteProtocolError:
            failed = True
            break
        seen += [getattr(event, "target", b"") for event in events]
    assert failed
    assert b"/admin" not in seen


SMALL = Limits(max_header_bytes=200, max_headers=5, max_target_bytes=50)


def _head(fields: int, value: bytes = b"v") -> bytes:
    lines = b"".join(b"X-%d: %b\r\n" % (index, value) for index in range(fields))
    return b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        pytest.param(_head(4), None, id="at-the-count-limit"),
        pytest.param(_head(5), 431, id="one-header-too-many"),
        pytest.param(_head(1, b"x" * 180), None, id="at-the-byte-limit"),
        pytest.param(_head(1, b"x" * 200), 431, id="over-the-byte-limit"),
        pytest.param(
            b"GET /" + b"a" * 49 + b" HTTP/1.1\r\nHost: a\r\n\r\n", None, id="target-at-limit"
        ),
        pytest.param(
            b"GET /" + b"a" * 50 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, id="target-over-limit"
        ),
        pytest.param(b"GET /" + b"a" * 500, 414, id="target-never-ends"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"x" * 5000, 431, id="header-never-ends"
        ),
    ],
)
def test_limits(adapter: Adapter, step: int, data: bytes, status: int | None) -> None:
    codec = ServerCodec(limits=SMALL, adapter=adapter)
    if status is None:
        assert feed(codec, data, step)[-1].__class__.__name__ == "EndOfMessage"
        return
    with pytest.raises(RemoteProtocolError) as info:
        feed(codec, data, step)
    assert info.value.status_hint == status


def test_trailers_obey_the_limits(adapter: Adapter) -> None:
    trailers = b"".join(b"T-%d: v\r\n" % index for index in range(6))
    data = (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n"
        + trailers
        + b"\r\n"
    )
    with pytest.raises(RemoteProtocolError) as info:
        ServerCodec(limits=SMALL, adapter=adapter).feed(data)
    assert info.value.status_hint == 431


def test_default_limits_are_envoys() -> None:
    limits = Limits()
    assert limits.max_header_bytes == 60 * 1024
    assert limits.max_headers == 100


def test_default_limits_accept_a_large_realistic_head(adapter: Adapter) -> None:
    data = _head(90, b"y" * 600)  # 90 fields, ~54 KiB
    events = ServerCodec(adapter=adapter).feed(data)
    assert len(events[0].headers) == 91  # type: ignore[union-attr]
    with pytest.raises(RemoteProtocolError) as info:
        ServerCodec(adapter=adapter).feed(_head(101))
    assert info.value.status_hint == 431
    with pytest.raises(RemoteProtocolError) as info:
        ServerCodec(adapter=adapter).feed(_head(70, b"z" * 1000))  # ~70 KiB of fields
    assert info.value.status_hint == 431
