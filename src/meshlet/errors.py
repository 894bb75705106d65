"""The one exception tree of meshlet, typed by who has to act on an error.

    MeshError
    ├── ConfigError            the operator: bad YAML, bad flags, bad files
    ├── ProtocolError          a peer or we broke HTTP/TLS framing
    │   ├── LocalProtocolError     we were asked to send something illegal
    │   └── RemoteProtocolError    the peer sent something illegal
    ├── UpstreamError          the upstream could not be used
    │   ├── UpstreamConnectError   refused / unreachable / TLS handshake failed
    │   ├── UpstreamTimeout        connect, header or idle deadline passed
    │   └── UpstreamReset          the connection died mid-exchange
    ├── NoRoute                no service, route or healthy endpoint matches
    ├── CircuitOpen            a breaker or pool limit refused the request
    ├── Overloaded             load shedding refused a sheddable request
    ├── IdentityError          certificates, SPIFFE IDs, CSRs and join tokens
    └── PolicyDenied           authentication or authorization said no

Inside the engines a denial is a ``Decision`` value, not an exception; ``PolicyDenied``
exists for the boundaries (CLI, control plane) where raising is the natural shape.
A broken invariant is not a MeshError: raise ``AssertionError("BUG: ...")``.
"""

from __future__ import annotations


class MeshError(Exception):
    """Root of every error meshlet raises on purpose."""


class ConfigError(MeshError):
    """The configuration is wrong; the message says where (file:line) and why.

    ``problems`` holds every problem found, one line each, so a user fixes them
    all in one pass instead of one per run.
    """

    def __init__(self, problems: str | list[str]) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__("\n".join(self.problems))


class ProtocolError(MeshError):
    """HTTP or TLS framing was violated."""


class LocalProtocolError(ProtocolError):
    """We were asked to emit something the protocol forbids (our bug or our caller's)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids.

    ``status_hint`` is the status a server should answer with (400, 413, 431, ...).
    """

    def __init__(self, message: str, *, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint


class UpstreamError(MeshError):
    """The upstream could not serve the request."""


class UpstreamConnectError(UpstreamError):
    """Connecting (TCP or TLS) to the upstream failed."""


class UpstreamTimeout(UpstreamError):
    """A deadline passed while waiting on the upstream."""


class UpstreamReset(UpstreamError):
    """The upstream connection closed or reset mid-exchange."""


class NoRoute(MeshError):
    """Nothing routes this request: unknown service, no matching route, no endpoint."""


class CircuitOpen(MeshError):
    """A circuit breaker or connection-pool limit refused the request."""


class Overloaded(MeshError):
    """Load shedding refused a request whose criticality allows dropping it."""


class IdentityError(MeshError):
    """A certificate, SPIFFE ID, CSR or join token is invalid or not acceptable."""


class PolicyDenied(MeshError):
    """Authentication or authorization refused the request."""
