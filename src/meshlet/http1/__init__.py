"""Sans-IO HTTP/1.1: bytes in, events out; events in, bytes out. No sockets here."""
