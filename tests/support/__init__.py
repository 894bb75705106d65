"""Typed helpers shared by the integration tests of every area.

Import them as ``from tests.support.<module> import ...``. Each module holds
one kind of scaffolding: ``pki`` (a test CA and SVID files), ``apps`` (small
asyncio upstreams on 127.0.0.1 port 0), ``proxy_app`` (the httptools test app
behind a sidecar), ``sidecars`` (an in-process outbound -> mTLS -> inbound pair),
``fixtures`` (the session CA, ``pki`` and the uvloop hook, imported by name into
a directory's conftest), ``processes`` (``meshlet`` as a real subprocess,
waiting on its JSON ready line, never on a guessed port), ``waiting`` (bounded
polling), ``http`` (a one-shot raw HTTP/1.1 GET) and ``binaries`` (skip a test
whose OS tool, curl or openssl, is missing).
"""
