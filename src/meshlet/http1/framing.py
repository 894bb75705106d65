"""What a message head means for the bytes after it (RFC 9112 §6).

Both parser adapters hand every parsed head to these functions, so the rules
that stop request smuggling — one Content-Length, digits only; Transfer-Encoding
exactly ``chunked`` and never beside Content-Length; one Host — are written once
and hold whichever parser sits underneath. The same rules decide keep-alive and
protocol switches, so the codec never asks the parser library what it thinks.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshlet.errors import RemoteProtocolError
from meshlet.http1.events import Headers

# Body framing kinds (ints, not an Enum: compared once per message on the hot path).
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3  # responses only, RFC 9112 §6.3 rule 8

# Content-Length is a count of octets; 18 digits stay below 2**63 so a peer
# cannot make us do arithmetic on absurd numbers.
_MAX_LENGTH_DIGITS = 18
_DIGITS = b"0123456789"
_VERSIONS = (b"1.1", b"1.0")
_FRAMING_NAMES = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"connection", b"upgrade"}
)


@dataclass(slots=True)
class Framing:
    """How one message's body is delimited and what follows it."""

    kind: int
    length: int = 0
    keep_alive: bool = True
    # The message asks for (request) or performs (response) a protocol switch:
    # after it the connection is no longer HTTP/1.1 (RFC 9110 §7.8, §9.3.6).
    switch: bool = False
    # The request this framing belongs to (requests only): how to answer it.
    method: bytes = b""
    version: bytes = b"1.1"


def connection_tokens(value: bytes | None) -> list[bytes]:
    """The lowercased tokens of a Connection header value (RFC 9110 §7.6.1)."""
    if not value:
        return []
    return [token.strip().lower() for token in value.split(b",") if token.strip()]


def parse_content_length(value: bytes, status_hint: int) -> int:
    """A Content-Length value; digits only (RFC 9110 §8.6), no lists, no signs."""
    if not value or len(value) > _MAX_LENGTH_DIGITS or value.translate(None, _DIGITS):
        raise RemoteProtocolError(f"invalid Content-Length {value!r}", status_hint=status_hint)
    return int(value)


def _scan(
    headers: Headers, status_hint: int
) -> tuple[bytes | None, bytes | None, int, bytes, bool]:
    """One pass over the fields that decide framing: (content-length,
    transfer-encoding, host count, joined connection value, upgrade present)."""
    length: bytes | None = None
    coding: bytes | None = None
    hosts = 0
    connection = b""
    upgrade = False
    for name, value in headers:
        if name not in _FRAMING_NAMES:
            continue  # most fields: one hashed lookup instead of five compares
        if name == b"content-length":
            if length is not None:
                # Two Content-Length fields, even equal ones, are how smuggling
                # starts (RFC 9112 §6.3 rule 5 lets us refuse); refuse.
                raise RemoteProtocolError("duplicate Content-Length", status_hint=status_hint)
            length = value
        elif name == b"transfer-encoding":
            if coding is not None:
                raise RemoteProtocolError("duplicate Transfer-Encoding", status_hint=status_hint)
            coding = value
        elif name == b"host":
            hosts += 1
        elif name == b"connection":
            connection = value if not connection else connection + b"," + value
        elif name == b"upgrade":
            upgrade = True
    return length, coding, hosts, connection, upgrade


def _body(length: bytes | None, coding: bytes | None, status_hint: int) -> Framing:
    if coding is not None:
        if length is not None:
            # RFC 9112 §6.1: a message with both is a smuggling attempt until proven
            # otherwise; a server MAY reject it and a proxy should.
            raise RemoteProtocolError(
                "Content-Length together with Transfer-Encoding", status_hint=status_hint
            )
        if coding.lower() != b"chunked":
            # Only a lone `chunked` has one meaning to every hop; anything else
            # (gzip, chunked; chunked, chunked) is refused rather than guessed at.
            raise RemoteProtocolError(
                f"unsupported Transfer-Encoding {coding!r}", status_hint=status_hint
            )
        return Framing(kind=CHUNKED)
    if length is not None:
        count = parse_content_length(length, status_hint)
        return Framing(kind=LENGTH if count else NO_BODY, length=count)
    return Framing(kind=NO_BODY)


def _keep_alive(version: bytes, tokens: list[bytes]) -> bool:
    # RFC 9112 §9.3: 1.1 persists unless `close`; 1.0 only with `keep-alive`.
    if version == b"1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens and b"close" not in tokens


def analyze_request(method: bytes, version: bytes, headers: Headers) -> Framing:
    """Framing, keep-alive and switch of a request head, or RemoteProtocolError(400)."""
    if version not in _VERSIONS:
        raise RemoteProtocolError(f"unsupported HTTP version {version!r}", status_hint=400)
    length, coding, hosts, connection, upgrade = _scan(headers, 400)
    if hosts > 1 or (hosts == 0 and version == b"1.1"):
        # RFC 9112 §3.2: exactly one Host in HTTP/1.1, else 400.
        raise RemoteProtocolError("missing or repeated Host", status_hint=400)
    if coding is not None and version == b"1.0":
        # RFC 9112 §6.1: chunked did not exist in 1.0; such a request is faulty.
        raise RemoteProtocolError("Transfer-Encoding in an HTTP/1.0 request", status_hint=400)
    if method == b"CONNECT":
        if length is not None or coding is not None:
            # CONNECT content has no defined meaning (RFC 9110 §9.3.6) and parsers
            # disagree on it: refuse instead of guessing where the tunnel starts.
            raise RemoteProtocolError("CONNECT with a body", status_hint=400)
        tokens = connection_tokens(connection)
        return Framing(
            kind=NO_BODY,
            keep_alive=_keep_alive(version, tokens),
            switch=True,
            method=method,
            version=version,
        )
    framing = _body(length, coding, 400)
    tokens = connection_tokens(connection) if connection else []
    framing.keep_alive = _keep_alive(version, tokens)
    framing.switch = upgrade and b"upgrade" in tokens
    if framing.switch and framing.kind != NO_BODY:
        # RFC 9110 §7.8 wants such content read as HTTP before switching, but
        # llhttp hands it over as the new protocol's bytes: refuse rather than
        # let two parsers disagree on where the tunnel starts (WebSocket and
        # h2c upgrades carry no content).
        raise RemoteProtocolError("Upgrade request with content", status_hint=400)
    framing.method = method
    framing.version = version
    return framing


def analyze_response(
    status: int,
    version: bytes,
    headers: Headers,
    *,
    request_method: bytes,
    upgrade_requested: bool,
) -> Framing:
    """Framing of a response head given the request it answers, or
    RemoteProtocolError(502): a broken upstream is a bad gateway to our client."""
    if version not in _VERSIONS:
        raise RemoteProtocolError(f"unsupported HTTP version {version!r}", status_hint=502)
    if not 100 <= status <= 599:
        raise RemoteProtocolError(f"invalid status code {status}", status_hint=502)
    length, coding, _hosts, connection, upgrade = _scan(headers, 502)
    tokens = connection_tokens(connection) if connection else []
    keep_alive = _keep_alive(version, tokens)
    if status == 101:
        if not upgrade_requested or not upgrade or b"upgrade" not in tokens:
            # RFC 9110 §15.2.2: 101 only answers an Upgrade, and names the protocol.
            raise RemoteProtocolError("unexpected 101 Switching Protocols", status_hint=502)
        return Framing(kind=NO_BODY, keep_alive=keep_alive, switch=True)
    framing = _body(length, coding, 502)
    if status < 200 or status in (204, 304) or request_method == b"HEAD":
        # RFC 9112 §6.3 rules 1-2: these never have content, whatever the headers say.
        framing.kind = NO_BODY
    elif request_method == b"CONNECT" and status < 300:
        framing.kind = NO_BODY
        framing.switch = True
    elif length is None and coding is None:
        framing.kind = UNTIL_CLOSE
        keep_alive = False
    framing.keep_alive = keep_alive
    return framing
