"""Sites, API keys, admin users and access tokens. Secrets are stored hashed only."""

from __future__ import annotations

import sqlite3
import uuid
from typing import Any

from server.errors import InvalidField
from server.store.db import reads, writes


def create_site(conn: sqlite3.Connection, name: str, now: int) -> str:
    if conn.execute("SELECT 1 FROM sites WHERE name = ?", (name,)).fetchone():
        raise InvalidField(f"site {name!r} exists already")
    site_uuid = str(uuid.uuid4())
    conn.execute("INSERT INTO sites (uuid, name, created) VALUES (?, ?, ?)", (site_uuid, name, now))
    return site_uuid


def add_api_key(conn: sqlite3.Connection, site_uuid: str, key_hash: str, now: int) -> None:
    if conn.execute("SELECT 1 FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone():
        raise InvalidField("that API key is in use by a site already")
    conn.execute(
        "INSERT INTO api_keys (key_hash, site_uuid, created) VALUES (?, ?, ?)",
        (key_hash, site_uuid, now),
    )


def add_user(
    conn: sqlite3.Connection, site_uuid: str, email: str, password_hash: str, now: int
) -> str:
    if conn.execute("SELECT 1 FROM users WHERE email = ?", (email,)).fetchone():
        raise InvalidField(f"an account for {email!r} exists already")
    user_uuid = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO users (uuid, site_uuid, email, password_hash, created) VALUES (?, ?, ?, ?, ?)",
        (user_uuid, site_uuid, email, password_hash, now),
    )
    return user_uuid


def create_site_with_admin(
    conn: sqlite3.Connection, name: str, key_hash: str, email: str, password_hash: str, now: int
) -> str:
    """A site, its API key and its first admin, together or not at all; the site's uuid."""
    site_uuid = create_site(conn, name, now)
    add_api_key(conn, site_uuid, key_hash, now)
    add_user(conn, site_uuid, email, password_hash, now)
    return site_uuid


def count_sites(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COUNT(*) FROM sites").fetchone()[0])


def list_sites(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT s.uuid, s.name, s.created, "
        "(SELECT group_concat(email, ',') FROM users u WHERE u.site_uuid = s.uuid) AS admins "
        "FROM sites s ORDER BY s.created, s.name"
    ).fetchall()
    return [
        {
            "siteUuid": r["uuid"],
            "name": r["name"],
            "created": r["created"],
            "admins": (r["admins"] or "").split(",") if r["admins"] else [],
        }
        for r in rows
    ]


@reads
def site_for_key(conn: sqlite3.Connection, key_hash: str) -> tuple[str, str] | None:
    row = conn.execute(
        "SELECT s.uuid, s.name FROM api_keys k JOIN sites s ON s.uuid = k.site_uuid "
        "WHERE k.key_hash = ?",
        (key_hash,),
    ).fetchone()
    return (row[0], row[1]) if row else None


def user_by_email(conn: sqlite3.Connection, email: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT uuid, site_uuid, email, password_hash FROM users WHERE email = ?", (email,)
    ).fetchone()
    return row


load_user = reads(user_by_email)


def add_token(
    conn: sqlite3.Connection, token_hash: str, user_uuid: str, site_uuid: str, expires: int
) -> None:
    conn.execute(
        "INSERT INTO access_tokens (token_hash, user_uuid, site_uuid, expires) VALUES (?, ?, ?, ?)",
        (token_hash, user_uuid, site_uuid, expires),
    )


@reads
def token(conn: sqlite3.Connection, token_hash: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(
        "SELECT t.user_uuid, t.site_uuid, t.expires, t.revoked, u.email FROM access_tokens t "
        "JOIN users u ON u.uuid = t.user_uuid WHERE t.token_hash = ?",
        (token_hash,),
    ).fetchone()
    return row


@writes
def revoke_token(conn: sqlite3.Connection, token_hash: str) -> None:
    conn.execute("UPDATE access_tokens SET revoked = 1 WHERE token_hash = ?", (token_hash,))


def purge_expired_tokens(conn: sqlite3.Connection, now: int) -> int:
    return conn.execute("DELETE FROM access_tokens WHERE expires < ?", (now,)).rowcount


@writes
def issue_token(
    conn: sqlite3.Connection,
    token_hash: str,
    user_uuid: str,
    site_uuid: str,
    expires: int,
    now: int,
) -> None:
    """Store a new access token; expired ones are of no use, so they are dropped here."""
    purge_expired_tokens(conn, now)
    add_token(conn, token_hash, user_uuid, site_uuid, expires)
