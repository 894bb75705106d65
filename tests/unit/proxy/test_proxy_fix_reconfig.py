"""rebind_problems: which config changes a running proxy refuses (they need new sockets)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from meshlet.config.bootstrap import (
    Address,
    BootstrapConfig,
    IdentityFiles,
    InboundConfig,
    MtlsMode,
    OutboundConfig,
)
from meshlet.proxy.reconfig import rebind_problems

ID = IdentityFiles(cert=Path("c.pem"), key=Path("k.pem"), bundle=Path("b.pem"))
IN = InboundConfig(
    listen=Address(host="127.0.0.1", port=15006),
    app=Address(host="127.0.0.1", port=8000),
    mtls=MtlsMode.STRICT,
    protocol="http",
)
OUT = OutboundConfig(listen=Address(host="127.0.0.1", port=15001), services=())
BASE = BootstrapConfig(identity=ID, admin=None, inbound=IN, outbound=OUT)


@pytest.mark.parametrize(
    ("new", "problems"),
    [
        pytest.param(BASE, [], id="same"),
        pytest.param(
            dataclasses.replace(BASE, inbound=dataclasses.replace(IN, mtls=MtlsMode.PERMISSIVE)),
            [],
            id="mtls-mode-is-live",
        ),
        pytest.param(dataclasses.replace(BASE, inbound=None), ["inbound"], id="inbound-removed"),
        pytest.param(
            dataclasses.replace(
                BASE, inbound=dataclasses.replace(IN, app=Address(host="127.0.0.1", port=9000))
            ),
            ["inbound.app"],
            id="app-port",
        ),
        pytest.param(
            dataclasses.replace(
                BASE, outbound=dataclasses.replace(OUT, listen=Address(host="127.0.0.1", port=1))
            ),
            ["outbound.listen"],
            id="outbound-listen",
        ),
        pytest.param(
            dataclasses.replace(BASE, identity=dataclasses.replace(ID, cert=Path("other.pem"))),
            ["identity"],
            id="identity-files",
        ),
    ],
)
def test_rebind_problems(new: BootstrapConfig, problems: list[str]) -> None:
    assert rebind_problems(BASE, new) == problems
