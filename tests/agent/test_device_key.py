"""The device key (§7, issue 15) on the agent side: the enrollment flow with a key (pure, canned
answers), where the key is kept (a 0600 file that survives restarts; derived for simulated
devices), that importing the agent does not import `cryptography`, and a real agent against a
real server: it enrolls, loses its token, and gets a new one by proving its key.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from agent import protocol
from agent.core.enrollment import enrollment
from agent.errors import StateError, Unauthorized, Unavailable
from agent.protocol import KeyProof, Registration, Request, Response
from agent.runtime.device_key import (
    KEY_FILE,
    DerivedKeyStore,
    DeviceKey,
    FileKeyStore,
    key_store_for,
)
from agent.runtime.memory import MemoryStateStore
from agent.runtime.state import FileStateStore
from tests.agent.agent_harness import make_agent
from tests.agent.test_core import CREDS, HARDWARE, REGISTERED, error, ok
from tests.helpers import Client, Server

KEY = DeviceKey(bytes(range(32)))
CHALLENGE_TEXT = "AQ-the-servers-challenge"


def public_of(key: DeviceKey) -> ed25519.Ed25519PublicKey:
    loaded = serialization.load_pem_public_key(key.public_pem().encode())
    assert isinstance(loaded, ed25519.Ed25519PublicKey)
    return loaded


def drive(
    answers: dict[str, list[Response]], *, key: DeviceKey | None = KEY, fresh: bool = False
) -> tuple[list[Request], Registration]:
    """Run the flow without admin credentials on canned answers (each name's list in order);
    the requests sent and the registration."""
    flow = enrollment(CREDS, "S1", HARDWARE, None, key=key, fresh_key=fresh)
    sent: list[Request] = []
    request = next(flow)
    while True:
        sent.append(request)
        try:
            request = flow.send(answers[request.name].pop(0))
        except StopIteration as done:
            registration: Registration = done.value
            return sent, registration


def challenge_answer() -> Response:
    return ok({"challenge": CHALLENGE_TEXT, "expiresIn": 60})


def assert_signed(body: dict[str, Any], key: DeviceKey = KEY) -> None:
    assert body["challenge"] == CHALLENGE_TEXT and body["publicKey"] == key.public_pem()
    public_of(key).verify(base64.b64decode(body["signature"]), CHALLENGE_TEXT.encode())


# -- the flow (pure) ---------------------------------------------------------------------------


def test_without_a_key_register_carries_no_key_fields() -> None:
    """No key: one register, no publicKey/challenge/signature (a device as before)."""
    sent, registration = drive({"register": [REGISTERED]}, key=None)
    assert [r.name for r in sent] == ["register"]
    assert set(sent[0].body) == {"serialNo", "hardware_info"}
    assert registration.key_proof is KeyProof.NONE


def test_a_fresh_key_is_offered_without_a_challenge() -> None:
    """A key just made cannot be bound anywhere yet: register sends publicKey, no challenge
    (the first enrollment costs no extra round trip)."""
    sent, registration = drive({"register": [REGISTERED]}, fresh=True)
    assert [r.name for r in sent] == ["register"]
    assert sent[0].body["publicKey"] == KEY.public_pem() and "signature" not in sent[0].body
    assert registration.key_proof is KeyProof.OFFERED


def test_a_held_key_proves_itself_with_a_signed_challenge() -> None:
    """A key held before: challenge, then register with publicKey, challenge and a signature
    (base64 Ed25519 over the challenge's UTF-8 bytes) that verifies."""
    sent, registration = drive({"challenge": [challenge_answer()], "register": [REGISTERED]})
    assert [r.name for r in sent] == ["challenge", "register"]
    assert sent[0].body == {"serialNo": "S1"} and sent[0].path == protocol.CHALLENGE
    assert_signed(sent[1].body)
    assert registration == Registration(device_uuid="d", token="t", key_proof=KeyProof.SIGNED)


def test_a_fresh_key_refused_as_unproved_falls_back_to_a_challenge() -> None:
    """The server holds a key for the device (40100 to the offer): the flow proves this key at
    once, in the same enrollment."""
    answers = {"register": [error(401, 40100), REGISTERED], "challenge": [challenge_answer()]}
    sent, registration = drive(answers, fresh=True)
    assert [r.name for r in sent] == ["register", "challenge", "register"]
    assert_signed(sent[2].body)
    assert registration.key_proof is KeyProof.SIGNED


@pytest.mark.parametrize(
    "not_found",
    [
        error(404, 40400),
        Response(status=404, body=b"<html><body>404 Not Found</body></html>"),
    ],
    ids=["envelope", "html"],
)
def test_a_server_without_challenges_gets_a_register_without_proof(not_found: Response) -> None:
    """agent/challenge answered 404 (a server without device keys, or a proxy's page): register
    with publicKey and no proof; the registration says so (the agent logs it)."""
    sent, registration = drive({"challenge": [not_found], "register": [REGISTERED]})
    assert [r.name for r in sent] == ["challenge", "register"]
    assert "challenge" not in sent[1].body and sent[1].body["publicKey"] == KEY.public_pem()
    assert registration.key_proof is KeyProof.UNSUPPORTED


def test_a_refused_proof_says_which_key_and_what_to_do() -> None:
    """A signed register refused (40100): Unauthorized naming the key's fingerprint and the
    admin re-save that lets the server bind it."""
    answers = {"challenge": [challenge_answer()], "register": [error(401, 40100)]}
    with pytest.raises(Unauthorized, match=KEY.fingerprint()) as refused:
        drive(answers)
    assert "device/save" in str(refused.value) and refused.value.code == 40100


def test_a_challenge_refused_for_load_is_raised_and_nothing_registered() -> None:
    """503 to agent/challenge: Unavailable (with its Retry-After) for the agent's backoff."""
    with pytest.raises(Unavailable) as busy:
        drive({"challenge": [error(503, 50300, **{"Retry-After": "5"})]})
    assert busy.value.retry_after == 5


# -- where the key is kept ------------------------------------------------------------------------


async def test_the_key_file_is_0600_and_survives_restarts(tmp_path: Path) -> None:
    """The first load makes device_key.pem (PKCS#8 PEM, mode 0600, fresh); a new store on the
    same folder (a restarted agent) loads the same key, not fresh, and leaves the file as is."""
    first = await FileKeyStore(tmp_path).load_or_create("S1")
    path = tmp_path / KEY_FILE
    assert first.fresh and path.stat().st_mode & 0o777 == 0o600
    written = path.read_bytes()
    assert written.startswith(b"-----BEGIN PRIVATE KEY-----")
    again = await FileKeyStore(tmp_path).load_or_create("S1")
    assert not again.fresh and again.key == first.key
    assert path.read_bytes() == written and not list(tmp_path.glob(".*.tmp"))
    assert key_store_for(FileStateStore(tmp_path)).__class__ is FileKeyStore


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"garbage", "not an unencrypted private key PEM"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "ECPrivateKey, not an Ed25519 key",
        ),
    ],
    ids=["garbage", "ec"],
)
async def test_an_unreadable_key_file_is_a_state_error_and_is_kept(
    tmp_path: Path, content: bytes, why: str
) -> None:
    """A key file that is not an Ed25519 key: StateError naming the file and the way out; the
    file is not replaced (a new key would be refused by the server)."""
    path = tmp_path / KEY_FILE
    path.write_bytes(content)
    with pytest.raises(StateError, match=why) as failed:
        await FileKeyStore(tmp_path).load_or_create("S1")
    assert str(path) in str(failed.value) and "device/save" in str(failed.value)
    assert path.read_bytes() == content


async def test_simulated_keys_are_derived_from_the_serial() -> None:
    """Memory state (the simulator): the key is derived from the serial and the device's seed,
    the same on every load, fresh only the first time; another serial, another key; twins (one
    serial, two seeds), two keys."""
    store = key_store_for(MemoryStateStore())
    assert isinstance(store, DerivedKeyStore)
    first, second = await store.load_or_create("S1"), await store.load_or_create("S1")
    assert first.fresh and not second.fresh and first.key == second.key
    assert (await DerivedKeyStore().load_or_create("S2")).key != first.key
    twin = (await DerivedKeyStore(salt=2**64 - 7).load_or_create("S1")).key
    assert twin != first.key
    assert (await DerivedKeyStore(salt=2**64 - 7).load_or_create("S1")).key == twin
    assert not hasattr(store, "__dict__")  # slots only


def test_importing_the_agent_does_not_import_cryptography() -> None:
    """A simulated fleet pays for `cryptography` only when a key signs, never at import."""
    code = "import sys, agent.runtime.agent; print('cryptography' in sys.modules)"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert run.stdout.strip() == "False"


# -- a real agent, a real server ------------------------------------------------------------------


async def fingerprint_on_server(admin: Client, serial: str = "S1") -> str | None:
    reply = await admin.get("/ota/api/device/findBy", serialNo=serial)
    shown: str | None = reply.data["keyFingerprint"]
    return shown


async def test_a_real_agent_recovers_a_lost_token_with_its_key(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """A real agent enrolls (its new key bound: the server's keyFingerprint is the key's); its
    token is deleted from state.json; a restarted agent proves its key (challenge, register),
    gets a new token and checks in. The old token is revoked; the key file is unchanged."""
    state_dir = tmp_path / "state"
    agent, transport = make_agent(server.base, state_dir)
    await agent.run_once()
    key_file = state_dir / KEY_FILE
    key = DeviceKey.from_pem(key_file.read_bytes())
    assert await fingerprint_on_server(admin) == key.fingerprint()
    old_token = agent.state.token
    state = json.loads((state_dir / "state.json").read_text())
    state["token"] = ""
    (state_dir / "state.json").write_text(json.dumps(state))
    await transport.close()

    again, transport2 = make_agent(server.base, state_dir)
    await again.run_once()
    assert transport2.names[:4] == ["login", "exists", "challenge", "register"]
    assert again.state.token not in ("", old_token)
    old = Client(admin.http, server.base, admin.key, old_token, scheme="Device")
    assert (await old.post("/ota/api/agent/checkin", {})).code == 40100
    assert await fingerprint_on_server(admin) == key.fingerprint()
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert DeviceKey.from_pem(key_file.read_bytes()) == key


async def test_a_real_agent_with_a_lost_key_is_refused_until_an_admin_resaves(
    server: Server, admin: Client, tmp_path: Path
) -> None:
    """The key file and token are lost (state wiped but the device saved and bound): the new
    key is refused with the hint; after an admin re-save the agent binds its new key."""
    agent, transport = make_agent(server.base, tmp_path / "a")
    await agent.run_once()
    first = await fingerprint_on_server(admin)
    await transport.close()
    wiped, transport2 = make_agent(server.base, tmp_path / "b", admin=False)
    with pytest.raises(Unauthorized, match="an admin must save the device again"):
        await wiped.run_once()
    assert await fingerprint_on_server(admin) == first
    await admin.post("/ota/api/device/save", [{"profile": {"hardware_info": {"serial_no": "S1"}}}])
    await wiped.run_once()
    new_key = DeviceKey.from_pem((tmp_path / "b" / KEY_FILE).read_bytes())
    assert await fingerprint_on_server(admin) == new_key.fingerprint() != first
    await transport2.close()
