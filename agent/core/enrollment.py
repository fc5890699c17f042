"""Enrollment as a flow of requests (STYLE §2): `exists` first, `save` only when missing, then
`register`. A driver does the I/O; this generator decides.

Why this order: saving a serial that exists resets the device on the server [seed]. The flow
asks `exists` on every run, so a restart, a crash after `save`, or a lost `register` response
finds the device and never saves it twice. `save` needs admin credentials; without them the
flow goes straight to `register`, which needs only the API key and fails with 40400 (a clear
error) when nobody saved the device. A token rejected with 40100 is renewed by running the
flow again: it registers, and it does not save a device that exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, replace

from agent import protocol
from agent.protocol import Credentials, Registration, Request, Response


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminLogin:
    email: str
    password: str


Flow = Generator[Request, Response, Registration]


def enrollment(
    creds: Credentials, serial: str, hardware: Mapping[str, str], admin: AdminLogin | None
) -> Flow:
    if admin is not None:
        token = protocol.parse_login(
            protocol.decode((yield protocol.login(creds, admin.email, admin.password)), "login")
        )
        admin_creds = replace(creds, admin_token=token)
        present = protocol.decode((yield protocol.exists(admin_creds, serial)), "exists")
        if present is not True:
            protocol.decode((yield protocol.save_device(admin_creds, hardware)), "save")
    answer = yield protocol.register(creds, serial, hardware)
    return protocol.parse_registration(protocol.decode(answer, "register"))


async def drive(flow: Flow, send: Callable[[Request], Awaitable[Response]]) -> Registration:
    """Run a flow with `send` doing the I/O."""
    request = next(flow)
    while True:
        response = await send(request)
        try:
            request = flow.send(response)
        except StopIteration as done:
            registration: Registration = done.value
            return registration
