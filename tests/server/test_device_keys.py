"""Device keys (§7, issue 15): challenge, register with a key and a proof, keyFingerprint.

Against a real server with the test's FixedClock. Every refusal is checked for its code, a
message naming what was wrong, and that nothing was written (the device's row read back, and the
victim's token still checking in).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from server.clock import FixedClock
from server.domain import device_keys
from server.domain.device_keys import KeyRecord
from server.errors import InvalidField, Unauthorized
from tests.helpers import NOW_MS, Client, Server
from tests.server.test_agent_api import CHECKIN

CHALLENGE = "/ota/api/agent/challenge"
REGISTER = "/ota/api/agent/register"
KEY_ROW = "SELECT token_hash, public_key, key_fingerprint FROM devices "
USED = "SELECT nonce, device_uuid, expires FROM used_challenges"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def pem(key: PrivateKey | rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def fingerprint(key: PrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def sign(key: PrivateKey, challenge: str) -> str:
    data = challenge.encode()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return base64.b64encode(key.sign(data)).decode()
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


def key_only(admin: Client, key: str | None = None) -> Client:
    return Client(admin.http, admin.base, key or admin.key)


async def save(admin: Client, serial: str = "D1") -> None:
    body = [{"profile": {"hardware_info": {"serial_no": serial}}}]
    assert (await admin.post("/ota/api/device/save", body)).status == 200


async def challenge_for(client: Client, serial: str = "D1") -> str:
    reply = await client.post(CHALLENGE, {"serialNo": serial})
    assert reply.status == 200, reply.body
    assert reply.data["expiresIn"] == 60
    text: str = reply.data["challenge"]
    return text


async def register(client: Client, serial: str = "D1", **fields: Any) -> Any:
    return await client.post(REGISTER, {"serialNo": serial, **fields})


async def register_proved(
    client: Client, key: PrivateKey, serial: str = "D1", *, send_key: bool = True
) -> Any:
    text = await challenge_for(client, serial)
    extra = {"publicKey": pem(key)} if send_key else {}
    return await register(client, serial, challenge=text, signature=sign(key, text), **extra)


def device_client(admin: Client, token: str) -> Client:
    return Client(admin.http, admin.base, admin.key, token, scheme="Device")


async def bound_device(admin: Client, key: PrivateKey, serial: str = "D1") -> Client:
    """A saved device whose first register bound `key`; a client holding its token."""
    await save(admin, serial)
    reply = await register(key_only(admin), serial, publicKey=pem(key))
    assert reply.status == 200, reply.body
    return device_client(admin, reply.data["token"])


async def fingerprint_shown(admin: Client, serial: str = "D1") -> str | None:
    reply = await admin.get("/ota/api/device/findBy", serialNo=serial)
    assert reply.status == 200, reply.body
    shown: str | None = reply.data["keyFingerprint"]
    return shown


async def checks_in(client: Client) -> bool:
    return bool((await client.post("/ota/api/agent/checkin", CHECKIN)).status == 200)


# -- binding -----------------------------------------------------------------------------------


async def test_first_register_binds_the_key_and_the_device_shows_its_fingerprint(
    server: Server, admin: Client
) -> None:
    """The first register of a saved device binds publicKey (no proof needed); the device record
    shows keyFingerprint = hex SHA-256 of the DER SubjectPublicKeyInfo; the token works."""
    key = ed25519.Ed25519PrivateKey.generate()
    device = await bound_device(admin, key)
    assert await fingerprint_shown(admin) == fingerprint(key)
    assert await checks_in(device)
    listed = await admin.get("/ota/api/device/find")
    assert listed.data[0]["keyFingerprint"] == fingerprint(key)
    assert server.sql(USED) == []  # no challenge used


async def test_a_device_without_a_key_works_as_before_and_shows_null(
    server: Server, admin: Client
) -> None:
    """register without publicKey: keyFingerprint null, check-ins work, and registering again
    without a key is allowed (nothing is bound)."""
    await save(admin)
    first = await register(key_only(admin), hardware_info={"model": "Old"})
    assert first.status == 200 and await fingerprint_shown(admin) is None
    assert await checks_in(device_client(admin, first.data["token"]))
    again = await register(key_only(admin))
    assert again.status == 200 and await checks_in(device_client(admin, again.data["token"]))
    assert server.sql(KEY_ROW + "WHERE serial_no = 'D1'")[0]["public_key"] is None


async def test_first_register_with_a_proof_checks_it_against_the_key_sent(
    admin: Client,
) -> None:
    """A proof at the first register must verify against publicKey (which is then bound); a
    proof signed by another key is 40100 and binds nothing."""
    await save(admin)
    key, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    text = await challenge_for(key_only(admin))
    wrong = await register(
        key_only(admin), publicKey=pem(key), challenge=text, signature=sign(other, text)
    )
    assert (
        wrong.code == 40100
        and "signature: does not verify against publicKey" in (wrong.body["message"])
    )
    assert await fingerprint_shown(admin) is None
    assert (await register_proved(key_only(admin), key)).status == 200
    assert await fingerprint_shown(admin) == fingerprint(key)


async def test_a_proof_without_a_key_to_check_it_against_is_40001(
    server: Server, admin: Client
) -> None:
    """challenge and signature on a device with no bound key and no publicKey: nothing to check
    the signature with (40001 naming publicKey); nothing is written."""
    await save(admin)
    key = ed25519.Ed25519PrivateKey.generate()
    reply = await register_proved(key_only(admin), key, send_key=False)
    assert reply.code == 40001 and reply.body["message"].startswith("publicKey:")
    assert server.sql(KEY_ROW + "WHERE serial_no = 'D1'")[0]["token_hash"] is None


# -- takeover, recovery, re-save ------------------------------------------------------------------


async def test_takeover_with_the_site_key_is_refused_and_the_victims_token_still_works(
    server: Server, admin: Client
) -> None:
    """An attacker holding only the site key cannot register a device whose key is bound: not
    without a proof, not with its own key, not naming the victim's key with its own signature.
    Each is 40100, nothing is written, and the victim's token still checks in."""
    victim_key = ed25519.Ed25519PrivateKey.generate()
    victim = await bound_device(admin, victim_key)
    before = [dict(r) for r in server.sql(KEY_ROW + "WHERE serial_no = 'D1'")]
    attacker = ed25519.Ed25519PrivateKey.generate()
    site_key_holder = key_only(admin)

    plain = await register(site_key_holder)
    assert plain.code == 40100 and "register needs challenge" in plain.body["message"]
    with_own_key = await register(site_key_holder, publicKey=pem(attacker))
    assert with_own_key.code == 40100
    own_proof = await register_proved(site_key_holder, attacker)
    assert own_proof.code == 40100 and "against the key bound" in own_proof.body["message"]
    text = await challenge_for(site_key_holder)
    forged = await register(
        site_key_holder, publicKey=pem(victim_key), challenge=text, signature=sign(attacker, text)
    )
    assert forged.code == 40100

    assert [dict(r) for r in server.sql(KEY_ROW + "WHERE serial_no = 'D1'")] == before
    assert await checks_in(victim)
    assert await fingerprint_shown(admin) == fingerprint(victim_key)


async def test_a_lost_token_is_recovered_with_the_key(server: Server, admin: Client) -> None:
    """The device lost its token: challenge, sign, register: a new token; the old one is
    revoked (40100); the key stays bound; the challenge is recorded as used."""
    key = ed25519.Ed25519PrivateKey.generate()
    old = await bound_device(admin, key)
    reply = await register_proved(key_only(admin), key)
    assert reply.status == 200, reply.body
    assert (await old.post("/ota/api/agent/checkin", CHECKIN)).code == 40100
    assert await checks_in(device_client(admin, reply.data["token"]))
    assert await fingerprint_shown(admin) == fingerprint(key)
    assert len(server.sql(USED)) == 1
    # publicKey may be left out once bound: the proof alone is enough
    again = await register_proved(key_only(admin), key, send_key=False)
    assert again.status == 200


async def test_a_bound_key_sent_again_is_fine_another_one_is_40100(
    server: Server, admin: Client
) -> None:
    """With a valid proof, publicKey equal to the bound key is accepted; a different publicKey
    (even with a valid proof by the bound key) is 40100 naming the way to rotate: an admin
    re-save. The token of the refused attempt's device still works."""
    key = ed25519.Ed25519PrivateKey.generate()
    await bound_device(admin, key)
    same = await register_proved(key_only(admin), key)
    assert same.status == 200
    text = await challenge_for(key_only(admin))
    other = ed25519.Ed25519PrivateKey.generate()
    rotate = await register(
        key_only(admin), publicKey=pem(other), challenge=text, signature=sign(key, text)
    )
    assert rotate.code == 40100 and "admin re-save" in rotate.body["message"]
    assert await fingerprint_shown(admin) == fingerprint(key)
    assert await checks_in(device_client(admin, same.data["token"]))


async def test_an_admin_resave_unbinds_the_key_so_a_new_one_is_bound(
    server: Server, admin: Client
) -> None:
    """device/save of an existing serial resets it (§3) and unbinds its key (keyFingerprint
    null); the next register binds a new key (keyFingerprint changes), and the old key no
    longer proves anything."""
    old_key, new_key = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    await bound_device(admin, old_key)
    await save(admin)
    assert await fingerprint_shown(admin) is None
    reply = await register(key_only(admin), publicKey=pem(new_key))
    assert reply.status == 200
    assert await fingerprint_shown(admin) == fingerprint(new_key) != fingerprint(old_key)
    assert (await register_proved(key_only(admin), old_key)).code == 40100
    assert (await register_proved(key_only(admin), new_key)).status == 200


# -- challenges ------------------------------------------------------------------------------


async def test_a_replayed_challenge_is_refused(server: Server, admin: Client) -> None:
    """A challenge and signature that registered once are 40100 the second time (the token of
    the good register stays valid); another challenge issued before it, unused, still works:
    each challenge is single use on its own. Used challenges are kept until they expire."""
    key = ed25519.Ed25519PrivateKey.generate()
    await bound_device(admin, key)
    first = await challenge_for(key_only(admin))
    second = await challenge_for(key_only(admin))
    good = await register(key_only(admin), challenge=second, signature=sign(key, second))
    assert good.status == 200
    used = [tuple(r) for r in server.sql(USED)]
    replay = await register(key_only(admin), challenge=second, signature=sign(key, second))
    assert replay.code == 40100 and "already used" in replay.body["message"]
    assert [tuple(r) for r in server.sql(USED)] == used
    assert await checks_in(device_client(admin, good.data["token"]))
    other = await register(key_only(admin), challenge=first, signature=sign(key, first))
    assert other.status == 200 and len(server.sql(USED)) == 2


async def test_used_challenges_are_forgotten_once_expired(
    server: Server, admin: Client, clock: FixedClock
) -> None:
    """What single use keeps is bounded: a used challenge's row goes with the next register
    that uses one after it expired."""
    key = ed25519.Ed25519PrivateKey.generate()
    await bound_device(admin, key)
    assert (await register_proved(key_only(admin), key)).status == 200
    clock.advance(61)
    assert (await register_proved(key_only(admin), key)).status == 200
    (row,) = server.sql(USED)
    assert row["expires"] == NOW_MS + 61_000 + 60_000


async def test_two_registers_racing_with_one_challenge_bind_once(
    server: Server, admin: Client
) -> None:
    """Two registers sent at once with the same proof: both pass the read-side check, the
    write transaction lets exactly one through."""
    key = ed25519.Ed25519PrivateKey.generate()
    await bound_device(admin, key)
    text = await challenge_for(key_only(admin))
    replies = await asyncio.gather(
        *(register(key_only(admin), challenge=text, signature=sign(key, text)) for _ in range(2))
    )
    assert sorted(r.code for r in replies) == [0, 40100]


async def test_an_expired_challenge_is_refused(
    server: Server, admin: Client, clock: FixedClock
) -> None:
    """A challenge is good for 60 s on the server's clock: at 59 s it works, at 60 s it is
    40100 (expired) and the device's token is untouched."""
    key = ed25519.Ed25519PrivateKey.generate()
    device = await bound_device(admin, key)
    text = await challenge_for(key_only(admin))
    clock.advance(60)
    late = await register(key_only(admin), challenge=text, signature=sign(key, text))
    assert late.code == 40100 and "challenge: expired" in late.body["message"]
    assert await checks_in(device)
    text = await challenge_for(key_only(admin))
    clock.advance(59)
    in_time = await register(key_only(admin), challenge=text, signature=sign(key, text))
    assert in_time.status == 200


async def test_challenges_of_unknown_or_other_sites_serials(
    server: Server, admin: Client, other: Client
) -> None:
    """A challenge for an unknown serial, or one saved only in another site, is 40400 (as
    register); a challenge another site issued for the same serial, or one for another serial,
    does not prove anything here (40100)."""
    await save(other, "B-ONLY")
    assert (await key_only(admin).post(CHALLENGE, {"serialNo": "NOPE"})).code == 40400
    assert (await key_only(admin).post(CHALLENGE, {"serialNo": "B-ONLY"})).code == 40400
    key = ed25519.Ed25519PrivateKey.generate()
    await bound_device(admin, key, "D1")
    await save(admin, "D2")
    await save(other, "D1")
    from_beta = await challenge_for(key_only(other), "D1")
    wrong_site = await register(
        key_only(admin), challenge=from_beta, signature=sign(key, from_beta)
    )
    assert wrong_site.code == 40100 and "not issued for this device" in wrong_site.body["message"]
    for_d2 = await challenge_for(key_only(admin), "D2")
    wrong_serial = await register(key_only(admin), challenge=for_d2, signature=sign(key, for_d2))
    assert wrong_serial.code == 40100
    altered = await challenge_for(key_only(admin))
    altered = altered[:-2] + ("AA" if altered[-2:] != "AA" else "BB")
    forged = await register(key_only(admin), challenge=altered, signature=sign(key, altered))
    assert forged.code == 40100
    nonsense = await register(key_only(admin), challenge="hello", signature=sign(key, "hello"))
    assert nonsense.code == 40100 and "not one this server issued" in nonsense.body["message"]
    bad_body = await key_only(admin).post(CHALLENGE, {})
    assert bad_body.code == 40001 and "serialNo" in bad_body.body["message"]
    assert (
        await Client(admin.http, admin.base, None).post(CHALLENGE, {"serialNo": "D1"})
    ).code == (40100)


async def test_challenges_survive_a_server_restart(server: Server, admin: Client) -> None:
    """Decision: a challenge is a MAC under a secret kept in the database, so one issued before
    a restart is still good after it (and still single use)."""
    key = ed25519.Ed25519PrivateKey.generate()
    await bound_device(admin, key)
    text = await challenge_for(key_only(admin))
    await server.restart()
    fresh = Client(admin.http, server.base, admin.key)
    assert (await register(fresh, challenge=text, signature=sign(key, text))).status == 200
    assert (await register(fresh, challenge=text, signature=sign(key, text))).code == 40100


# -- EC P-256 ----------------------------------------------------------------------------------


async def test_an_ec_p256_key_proves_with_der_or_raw_signatures(admin: Client) -> None:
    """EC P-256 keys are accepted; ECDSA-SHA256 signatures as DER or as raw r|s (64 bytes)."""
    key = ec.generate_private_key(ec.SECP256R1())
    await bound_device(admin, key)
    assert await fingerprint_shown(admin) == fingerprint(key)
    assert (await register_proved(key_only(admin), key)).status == 200
    text = await challenge_for(key_only(admin))
    r, s = decode_dss_signature(key.sign(text.encode(), ec.ECDSA(hashes.SHA256())))
    raw = base64.b64encode(r.to_bytes(32) + s.to_bytes(32)).decode()
    assert (await register(key_only(admin), challenge=text, signature=raw)).status == 200


# -- malformed input: 40001 naming the field, nothing written ------------------------------------

ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_PEM = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
P384_PEM = pem(ec.generate_private_key(ec.SECP384R1()))
PRIVATE_PEM = ED_KEY.private_bytes(
    serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
).decode()
B64_10 = base64.b64encode(b"x" * 10).decode()

MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("key not PEM", {"publicKey": "ssh-ed25519 AAAA"}, "publicKey: must be one"),
    ("key RSA", {"publicKey": RSA_PEM}, "publicKey: RSA keys are not accepted"),
    ("key P-384", {"publicKey": P384_PEM}, "publicKey: an EC key on secp384r1"),
    ("key private", {"publicKey": PRIVATE_PEM}, "publicKey: is a private key"),
    ("key number", {"publicKey": 5}, "publicKey: must be a string"),
    ("key two blocks", {"publicKey": pem(ED_KEY) * 2}, "publicKey: must be one"),
    (
        "key garbled",
        {"publicKey": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
        "publicKey: not a readable",
    ),
    ("key too long", {"publicKey": "A" * 5000}, "publicKey"),
    ("signature not base64", {"challenge": "c", "signature": "%%%"}, "signature: not base64"),
    ("signature short", {"challenge": "c", "signature": "AAAA"}, "signature: 3 bytes"),
    ("signature number", {"challenge": "c", "signature": 1}, "signature: must be a string"),
    ("signature alone", {"signature": B64_10}, "challenge: is required"),
    ("challenge alone", {"challenge": "c"}, "signature: is required"),
    ("challenge number", {"challenge": 7, "signature": B64_10}, "challenge: must be a string"),
]


@pytest.mark.parametrize(("case", "fields", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_malformed_keys_and_proofs_are_40001_and_write_nothing(
    server: Server, admin: Client, case: str, fields: dict[str, Any], message: str
) -> None:
    """Each malformed publicKey / challenge / signature is 40001 with a message naming the
    field; the bound key, the token and the last challenge are unchanged; the token works."""
    device = await bound_device(admin, ED_KEY)
    before = [dict(r) for r in server.sql(KEY_ROW + "WHERE serial_no = 'D1'")]
    reply = await register(key_only(admin), **fields)
    assert reply.code == 40001, reply.body
    assert message in reply.body["message"]
    assert [dict(r) for r in server.sql(KEY_ROW + "WHERE serial_no = 'D1'")] == before
    assert await checks_in(device)


async def test_an_ed25519_signature_of_the_wrong_length_is_40001(
    server: Server, admin: Client
) -> None:
    """A signature that cannot be an Ed25519 one (10 bytes) against a bound Ed25519 key: 40001
    naming signature, nothing written."""
    device = await bound_device(admin, ED_KEY)
    text = await challenge_for(key_only(admin))
    reply = await register(key_only(admin), challenge=text, signature=B64_10)
    assert reply.code == 40001 and reply.body["message"].startswith("signature: 10 bytes")
    assert server.sql(USED) == []
    assert await checks_in(device)


async def test_a_malformed_key_at_the_first_register_binds_nothing(
    server: Server, admin: Client
) -> None:
    """An RSA key at the first register: 40001, no token, no key."""
    await save(admin)
    reply = await register(key_only(admin), publicKey=RSA_PEM)
    assert reply.code == 40001
    (row,) = server.sql(KEY_ROW + "WHERE serial_no = 'D1'")
    assert row["token_hash"] is None and row["public_key"] is None


# -- the pure rules ----------------------------------------------------------------------------

SECRET = b"s" * 32


def test_open_challenge_checks_secret_scope_and_time() -> None:
    """A challenge opens only with the secret, site and serial it was issued for, inside
    [issue, issue + 60 s)."""
    issued = device_keys.issue_challenge(SECRET, "site", "S1", b"n" * 16, NOW_MS)
    assert len(issued.text) == 55 and issued.expires_ms == NOW_MS + 60_000
    opened = device_keys.open_challenge(SECRET, "site", "S1", issued.text, NOW_MS)
    assert opened == device_keys.Opened(nonce=b"n" * 16, expires_ms=NOW_MS + 60_000)
    assert device_keys.claimed_nonce(issued.text) == b"n" * 16  # what the store looks up
    assert device_keys.claimed_nonce("hello") is None
    for secret, site, serial, now in [
        (b"t" * 32, "site", "S1", NOW_MS),
        (None, "site", "S1", NOW_MS),
        (SECRET, "other", "S1", NOW_MS),
        (SECRET, "site", "S2", NOW_MS),
        (SECRET, "site", "S1", NOW_MS + 60_000),
        (SECRET, "site", "S1", NOW_MS - 1),  # the clock stepped back past its issue
    ]:
        with pytest.raises(Unauthorized):
            device_keys.open_challenge(secret, site, serial, issued.text, now)


def test_check_register_without_a_bound_key_binds_what_is_offered() -> None:
    """No key bound, no proof: the offered key (or none) is bound, no challenge consumed."""
    record = KeyRecord(device_uuid="d", key_der=None)
    offered = device_keys.parse_public_key(pem(ED_KEY))
    outcome = device_keys.check_register(
        record=record, offered=offered, proof=None, secret=None, site_uuid="s", serial="S1",
        now_ms=NOW_MS,
    )  # fmt: skip
    assert outcome.key == offered and outcome.consumed is None
    with pytest.raises(InvalidField, match="publicKey"):
        device_keys.parse_public_key(RSA_PEM)
