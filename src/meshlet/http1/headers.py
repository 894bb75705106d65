"""Header helpers a proxy needs: hop-by-hop stripping, request-target parsing.

Pure functions over the codec's event types; the proxy calls them between the
server codec that read a request and the client codec that forwards it.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlet.errors import RemoteProtocolError
from meshlet.http1.events import Headers, Request
from meshlet.http1.framing import connection_tokens

# RFC 9110 §7.6.1 names these (plus every field listed in Connection) as
# meaningful to one hop only; Proxy-Connection and Keep-Alive are the legacy
# pair RFC 9110 tells intermediaries to remove as well.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DEFAULT_PORTS = {b"http": 80, b"https": 443, b"ws": 80, b"wss": 443}
_DIGITS = b"0123456789"


def strip_hop_by_hop(headers: Headers, *, upgrade: bool = False) -> Headers:
    """``headers`` without the hop-by-hop fields (RFC 9110 §7.6.1).

    With ``upgrade=True`` (forwarding an Upgrade request or its 101) the
    ``upgrade`` field stays and ``connection: upgrade`` is re-added, because a
    protocol switch must be asked for on every hop (RFC 9110 §7.8). Framing is
    per hop too: a body that arrived chunked has no framing header after this,
    so the forwarder adds ``transfer-encoding: chunked`` back for the next hop.
    """
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(connection_tokens(value))
    out: Headers = []
    for field in headers:
        name = field[0]
        if name in HOP_BY_HOP or name in named:
            if upgrade and name == b"upgrade":
                out.append(field)
            continue
        out.append(field)
    if upgrade:
        out.append((b"connection", b"upgrade"))
    return out


def expects_continue(request: Request) -> bool:
    """Does the client wait for ``100 Continue`` before sending its body?

    RFC 9110 §10.1.1: only ``100-continue`` is defined, case-insensitively, and
    a server must ignore it in an HTTP/1.0 request.
    """
    if request.http_version != b"1.1":
        return False
    for name, value in request.headers:
        if name == b"expect" and value.strip().lower() == b"100-continue":
            return True
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """A parsed request-target (RFC 9112 §3.2).

    origin-form ``/p?q`` has no scheme or host; absolute-form
    ``http://h:1/p?q`` has all four; authority-form ``h:443`` (CONNECT) has a
    host and port and an empty path; asterisk-form has the path ``*``. Hosts are
    lowercased, without the brackets of an IPv6 literal; ``port`` is None when
    the target gives none (the scheme's default port is the caller's choice).
    """

    scheme: bytes | None
    host: bytes | None
    port: int | None
    path: bytes


def parse_target(target: bytes) -> Target:
    """The parts of a request-target, or RemoteProtocolError(400)."""
    if target.startswith(b"/"):
        return Target(scheme=None, host=None, port=None, path=target)
    if target == b"*":
        return Target(scheme=None, host=None, port=None, path=b"*")
    scheme, sep, rest = target.partition(b"://")
    if not sep:
        host, port = split_host_port(target)
        if port is None:
            raise RemoteProtocolError(f"authority-form without a port {target!r}")
        return Target(scheme=None, host=host, port=port, path=b"")
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise RemoteProtocolError(f"unsupported scheme in {target!r}")
    cut = len(rest)
    for delimiter in (b"/", b"?", b"#"):
        index = rest.find(delimiter)
        if 0 <= index < cut:
            cut = index
    authority, path = rest[:cut], rest[cut:]
    if b"@" in authority:
        # RFC 9110 §4.2.4: userinfo is deprecated and a phishing tool; refuse it.
        raise RemoteProtocolError(f"userinfo in request-target {target!r}")
    host, port = split_host_port(authority)
    if path.startswith(b"#"):
        path = b""
    if not path.startswith(b"/"):
        path = b"/" + path
    return Target(scheme=scheme, host=host, port=port, path=path)


def split_host_port(authority: bytes) -> tuple[bytes, int | None]:
    """``(host, port)`` from ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``
    (a Host header or an authority), host lowercased; RemoteProtocolError(400)
    when it is not one of those."""
    if authority.startswith(b"["):
        end = authority.find(b"]")
        if end < 0:
            raise RemoteProtocolError(f"unclosed IPv6 literal in {authority!r}")
        host, rest = authority[1:end], authority[end + 1 :]
        if not host or host.translate(None, b"0123456789abcdefABCDEF:."):
            raise RemoteProtocolError(f"invalid IPv6 literal in {authority!r}")
        if rest and not rest.startswith(b":"):
            raise RemoteProtocolError(f"junk after IPv6 literal in {authority!r}")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_bytes = authority.rpartition(b":")
        if not sep:
            host, port_text = authority, None
        else:
            port_text = port_bytes
        if not host or b":" in host:
            raise RemoteProtocolError(f"invalid host in {authority!r}")
    return host.lower(), _port(port_text, authority)


def _port(text: bytes | None, authority: bytes) -> int | None:
    if text is None:
        return None
    # RFC 3986 allows an empty port after the colon; it means the default.
    if not text:
        return None
    if len(text) > 5 or text.translate(None, _DIGITS) or int(text) > 65535:
        raise RemoteProtocolError(f"invalid port in {authority!r}")
    return int(text)
