"""Free loopback ports for a local mesh, and the race that comes with them.

The ideal (STYLE.md: bind port 0 and pass the socket in) is impossible here: a
sidecar is a separate program that reads its listen address from a file, and
every other sidecar must know that address before it starts. So ``PortPicker``
binds 127.0.0.1:0, reads the port, and keeps the socket open until every port of
the mesh is picked (so it never hands out one port twice), then closes them all
just before the processes start.

The race: between ``release()`` and a sidecar's bind, another program on the
machine may take one of those ports. The sidecar then fails with EADDRINUSE; the
runner notices (``looks_like_port_clash``) and ``meshlet up`` starts over with
fresh ports, a bounded number of times. The window is a few milliseconds.
"""

from __future__ import annotations

import socket

from meshlet.mesh.plan import HOST

START_ATTEMPTS = 3  # a clash twice in a row on loopback means something else is wrong


class PortPicker:
    """Hands out distinct free ports, holding each until ``release``."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []

    def __call__(self) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((HOST, 0))
        self._held.append(sock)
        return int(sock.getsockname()[1])

    def release(self) -> None:
        for sock in self._held:
            sock.close()
        self._held.clear()


def looks_like_port_clash(output: str) -> bool:
    """Whether a failed process's output says its address was taken."""
    lowered = output.lower()  # asyncio says "address already in use", the OS "Address ..."
    return "address already in use" in lowered or "eaddrinuse" in lowered or "errno 98" in lowered
