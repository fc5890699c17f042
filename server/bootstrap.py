"""Creating sites with their first admin and API key (new database, `midm-server site add`).

Secrets that the server generates are shown once: returned to the caller, which writes them to
a 0600 credentials file next to the database (first site) or prints them (`site add`). A
password given through MIDM_ADMIN_PASSWORD is never printed or written anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from server.auth import PASSWORD_COST, hash_password, hash_secret, new_secret
from server.clock import Clock
from server.config import SeedSite
from server.store import sites
from server.store.db import Database


@dataclass(frozen=True, slots=True, kw_only=True)
class NewSite:
    siteUuid: str  # noqa: N815 - printed as JSON with the protocol's names
    site: str
    apiKey: str | None  # noqa: N815 - None when the key came from the environment
    adminEmail: str  # noqa: N815
    adminPassword: str | None  # noqa: N815 - None when the password came from the environment


def create_site(
    db: Database, seed: SeedSite, clock: Clock, *, password_cost: int = PASSWORD_COST
) -> NewSite:
    """A site with its API key and admin. `password_cost` (scrypt n) is lowered by tests only."""
    key = seed.api_key or new_secret()
    password = seed.admin_password or new_secret()[:20]
    email = seed.admin_email or f"admin@{seed.name}.local"
    password_hash = hash_password(password, cost=password_cost)

    site_uuid = db.write_sync(
        sites.create_site_with_admin,
        seed.name,
        hash_secret(key),
        email,
        password_hash,
        clock.now_ms(),
    )
    return NewSite(
        siteUuid=site_uuid,
        site=seed.name,
        apiKey=None if seed.api_key else key,
        adminEmail=email,
        adminPassword=None if seed.admin_password else password,
    )


def ensure_first_site(db: Database, seed: SeedSite, clock: Clock) -> NewSite | None:
    if db.read_sync(sites.count_sites) > 0:
        return None
    return create_site(db, seed, clock)


def write_credentials(path: Path, created: NewSite) -> None:
    """Write generated secrets to `path` with mode 0600 (created exclusively, never widened)."""
    values = {k: v for k, v in asdict(created).items() if v is not None}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(values, handle, indent=2)
        handle.write("\n")
    path.chmod(0o600)
