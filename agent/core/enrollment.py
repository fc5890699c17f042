"""Enrollment as a flow of requests (STYLE §2): `exists` first, `save` only when missing, then
`register`. A driver does the I/O; this generator decides.

Why this order: saving a serial that exists resets the device on the server [seed]. The flow
asks `exists` on every run, so a restart, a crash after `save`, or a lost `register` response
finds the device and never saves it twice. `save` needs admin credentials; without them the
flow goes straight to `register`, which needs only the API key and fails with 40400 (a clear
error) when nobody saved the device. A token rejected with 40100 is renewed by running the
flow again: it registers, and it does not save a device that exists.

Device keys (§7): with a key, `register` sends its `publicKey`. A key just made (`fresh`) is
registered as it is (no server can hold it yet; one round trip); otherwise, or when that
register is 40100 (the server holds a key for the device), the flow asks `agent/challenge`,
signs the challenge's UTF-8 bytes and registers with `challenge` and `signature`. A server
without `agent/challenge` (HTTP 404) gets the register without a proof (`KeyProof.UNSUPPORTED`,
which the agent logs). A signed register refused with 40100 is raised with a hint: the server
holds another key for this device, and only an admin re-save lets it bind this one.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

from agent import protocol
from agent.errors import Unauthorized
from agent.protocol import Credentials, KeyProof, Registration, Request, Response


@dataclass(frozen=True, slots=True, kw_only=True)
class AdminLogin:
    email: str
    password: str


class ProofKey(Protocol):
    """The device's key as the flow uses it (agent.runtime.device_key.DeviceKey)."""

    def public_pem(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...

    def fingerprint(self) -> str: ...


Flow = Generator[Request, Response, Registration]
HTTP_NOT_FOUND = 404


def _registered(answer: Response, proof: KeyProof) -> Registration:
    return replace(
        protocol.parse_registration(protocol.decode(answer, "register")), key_proof=proof
    )


def enrollment(
    creds: Credentials,
    serial: str,
    hardware: Mapping[str, str],
    admin: AdminLogin | None,
    *,
    key: ProofKey | None = None,
    fresh_key: bool = False,
) -> Flow:
    if admin is not None:
        token = protocol.parse_login(
            protocol.decode((yield protocol.login(creds, admin.email, admin.password)), "login")
        )
        admin_creds = replace(creds, admin_token=token)
        present = protocol.decode((yield protocol.exists(admin_creds, serial)), "exists")
        if present is not True:
            protocol.decode((yield protocol.save_device(admin_creds, hardware)), "save")
    if key is None:
        answer = yield protocol.register(creds, serial, hardware)
        return _registered(answer, KeyProof.NONE)
    return (yield from _register_with_key(creds, serial, hardware, key, fresh=fresh_key))


def _register_with_key(
    creds: Credentials, serial: str, hardware: Mapping[str, str], key: ProofKey, *, fresh: bool
) -> Flow:
    public = key.public_pem()
    if fresh:
        answer = yield protocol.register(creds, serial, hardware, public_key=public)
        try:
            return _registered(answer, KeyProof.OFFERED)
        except Unauthorized:
            pass  # a key is bound for this device already: prove this one
    reply = yield protocol.challenge(creds, serial)
    if reply.status == HTTP_NOT_FOUND:  # a server without device keys (or no such device)
        answer = yield protocol.register(creds, serial, hardware, public_key=public)
        return _registered(answer, KeyProof.UNSUPPORTED)
    challenge = protocol.parse_challenge(protocol.decode(reply, "challenge"))
    signature = key.sign(challenge.encode("utf-8"))
    answer = yield protocol.register(
        creds, serial, hardware, public_key=public, proof=(challenge, signature)
    )
    try:
        return _registered(answer, KeyProof.SIGNED)
    except Unauthorized as exc:
        raise Unauthorized(
            f"{exc}. This device's key (fingerprint {key.fingerprint()}) was refused: if the "
            f"server holds another key for {serial!r}, an admin must save the device again "
            "(device/save) to bind this one",
            code=exc.code,
            status=exc.status,
            uq=exc.uq,
            retry_after=exc.retry_after,
        ) from exc


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
