"""The sidecar: the only package of the data plane that touches asyncio, sockets and TLS.

Import the submodules you need (``meshlet.proxy.server``); this package imports
nothing on its own so ``meshlet --help`` stays fast and idle RSS stays small.
"""
