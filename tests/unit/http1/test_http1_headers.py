"""Proxy header helpers: hop-by-hop stripping, request-target parsing."""

from __future__ import annotations

import pytest

from meshlet.errors import RemoteProtocolError
from meshlet.http1.events import Request
from meshlet.http1.headers import (
    Target,
    expects_continue,
    parse_target,
    split_host_port,
    strip_hop_by_hop,
)


def test_strip_hop_by_hop_removes_the_rfc_list_and_connection_named_fields() -> None:
    headers = [
        (b"host", b"api"),
        (b"connection", b"keep-alive, X-Trace-Hop"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"te", b"trailers"),
        (b"trailer", b"x-checksum"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"websocket"),
        (b"x-trace-hop", b"1"),
        (b"x-request-id", b"r1"),
        (b"content-type", b"application/json"),
    ]
    assert strip_hop_by_hop(headers) == [
        (b"host", b"api"),
        (b"x-request-id", b"r1"),
        (b"content-type", b"application/json"),
    ]


def test_strip_hop_by_hop_keeps_an_upgrade_when_asked() -> None:
    headers = [
        (b"host", b"a"),
        (b"connection", b"Upgrade, x-private"),
        (b"upgrade", b"websocket"),
        (b"x-private", b"secret"),
        (b"sec-websocket-key", b"k"),
    ]
    assert strip_hop_by_hop(headers, upgrade=True) == [
        (b"host", b"a"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-key", b"k"),
        (b"connection", b"upgrade"),
    ]


def test_strip_hop_by_hop_leaves_the_input_alone() -> None:
    headers = [(b"connection", b"close"), (b"host", b"a")]
    strip_hop_by_hop(headers)
    assert headers == [(b"connection", b"close"), (b"host", b"a")]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param(
            b"/v1/chat?x=1",
            Target(scheme=None, host=None, port=None, path=b"/v1/chat?x=1"),
            id="origin-form",
        ),
        pytest.param(
            b"http://Inference.ML:8080/v1/x?y",
            Target(scheme=b"http", host=b"inference.ml", port=8080, path=b"/v1/x?y"),
            id="absolute",
        ),
        pytest.param(
            b"HTTP://api",
            Target(scheme=b"http", host=b"api", port=None, path=b"/"),
            id="absolute-no-path",
        ),
        pytest.param(
            b"http://api?q=1",
            Target(scheme=b"http", host=b"api", port=None, path=b"/?q=1"),
            id="absolute-query-only",
        ),
        pytest.param(
            b"http://[::1]:9000/p",
            Target(scheme=b"http", host=b"::1", port=9000, path=b"/p"),
            id="ipv6-port",
        ),
        pytest.param(
            b"https://[2001:DB8::1]/",
            Target(scheme=b"https", host=b"2001:db8::1", port=None, path=b"/"),
            id="ipv6",
        ),
        pytest.param(
            b"http://10.0.0.1:80/",
            Target(scheme=b"http", host=b"10.0.0.1", port=80, path=b"/"),
            id="ipv4",
        ),
        pytest.param(
            b"model.ns:443",
            Target(scheme=None, host=b"model.ns", port=443, path=b""),
            id="authority-form",
        ),
        pytest.param(
            b"[::1]:443", Target(scheme=None, host=b"::1", port=443, path=b""), id="authority-ipv6"
        ),
        pytest.param(b"*", Target(scheme=None, host=None, port=None, path=b"*"), id="asterisk"),
    ],
)
def test_parse_target(target: bytes, expected: Target) -> None:
    assert parse_target(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        pytest.param(b"http://user:pw@host/", id="userinfo"),
        pytest.param(b"ftp://host/", id="unknown-scheme"),
        pytest.param(b"http:///p", id="empty-host"),
        pytest.param(b"http://h:99999/", id="port-too-big"),
        pytest.param(b"http://h:8o/", id="port-not-digits"),
        pytest.param(b"http://[::1/", id="unclosed-ipv6"),
        pytest.param(b"http://[zz::1]/", id="bad-ipv6"),
        pytest.param(b"http://[::1]x/", id="junk-after-ipv6"),
        pytest.param(b"http://a:b:c/", id="colons-without-brackets"),
        pytest.param(b"host-without-port", id="authority-no-port"),
    ],
)
def test_parse_target_refuses(target: bytes) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_target(target)
    assert info.value.status_hint == 400


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        (b"api", (b"api", None)),
        (b"API:8080", (b"api", 8080)),
        (b"api:", (b"api", None)),
        (b"[fe80::1]", (b"fe80::1", None)),
        (b"[fe80::1]:1", (b"fe80::1", 1)),
    ],
)
def test_split_host_port(authority: bytes, expected: tuple[bytes, int | None]) -> None:
    assert split_host_port(authority) == expected


@pytest.mark.parametrize(
    ("headers", "version", "expected"),
    [
        ([(b"expect", b"100-continue")], b"1.1", True),
        ([(b"expect", b"100-Continue ")], b"1.1", True),
        ([(b"expect", b"100-continue")], b"1.0", False),
        ([(b"expect", b"something-else")], b"1.1", False),
        ([], b"1.1", False),
    ],
)
def test_expects_continue(
    headers: list[tuple[bytes, bytes]], version: bytes, expected: bool
) -> None:
    request = Request(method=b"PUT", target=b"/", headers=headers, http_version=version)
    assert expects_continue(request) is expected
