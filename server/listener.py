"""The listening sockets, bound before the server writes anything: a taken port leaves no trace.

`bind(host, port)` binds every address `host` resolves to (as asyncio's create_server would);
the CLI then prepares the database and hands the sockets to aiohttp (`web.SockSite`).
"""

from __future__ import annotations

import socket

from server.errors import ConfigError

BACKLOG = 128  # aiohttp's default


def bind(host: str, port: int) -> list[socket.socket]:
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"--host: cannot resolve {host!r} ({exc.strerror})") from exc
    addresses = dict.fromkeys((family, address) for family, _, _, _, address in found)
    bound: list[socket.socket] = []
    try:
        for family, address in addresses:
            bound.append(socket.create_server(address, family=family, backlog=BACKLOG))
    except OSError as exc:
        for sock in bound:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return bound


def url_of(host: str, sockets: list[socket.socket]) -> str:
    """The server's base URL: `host` and the port actually bound (port 0 picks one)."""
    port = sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"
