"""Former home of the helpers now in ``tests.support``; kept as a re-export
because the proxy-ops tests (tests/integration/proxy) still import from here.
New code imports from ``tests.support.*`` directly."""

from __future__ import annotations

from tests.support.apps import EchoApp, echo_app, tcp_echo
from tests.support.http import http_get
from tests.support.pki import TRUST_DOMAIN, client_context, issue, make_ca, spiffe
from tests.support.processes import (
    PYTHON,
    REPO,
    ProxyProcess,
    identity_block,
    python_executable,
    running_proxy,
    start_proxy,
    write_bootstrap,
)
from tests.support.waiting import STEP_TIMEOUT_S, wait_until

__all__ = [
    "PYTHON",
    "REPO",
    "STEP_TIMEOUT_S",
    "TRUST_DOMAIN",
    "EchoApp",
    "ProxyProcess",
    "client_context",
    "echo_app",
    "http_get",
    "identity_block",
    "issue",
    "make_ca",
    "python_executable",
    "running_proxy",
    "spiffe",
    "start_proxy",
    "tcp_echo",
    "wait_until",
    "write_bootstrap",
]
