"""The server's settings: one dataclass, built once by the CLI; the only reader of os.environ.

Defaults < environment (MIDM_*) < command-line flags. The database defaults to
`<user data dir>/midm-fleet/midm.sqlite`; uploaded files live in `<db path>.files/` unless
`--files-dir` says otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from server.domain.ratelimit import Network
from server.limits import BODY_IDLE_S, HEADER_TIMEOUT_S, KEEPALIVE_S, MAX_CONNECTIONS

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_JSON_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 8 * 1024 * 1024 * 1024
DEFAULT_TOKEN_TTL_S = 24 * 3600
DEFAULT_CHECKIN_INTERVAL_S = 60


def default_db_path() -> Path:
    return Path(platformdirs.user_data_dir("midm-fleet")) / "midm.sqlite"


SEED_VARIABLES = ("MIDM_SITE", "MIDM_API_KEY", "MIDM_ADMIN_EMAIL", "MIDM_ADMIN_PASSWORD")


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedSite:
    """What a new database's first site is made of (MIDM_SITE, MIDM_API_KEY, ...)."""

    name: str = "default"
    api_key: str | None = None
    admin_email: str | None = None
    admin_password: str | None = None
    variables: tuple[str, ...] = ()  # the MIDM_* names that were set, to say they are ignored

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SeedSite:
        env = os.environ if env is None else env
        return cls(
            name=env.get("MIDM_SITE") or "default",
            api_key=env.get("MIDM_API_KEY") or None,
            admin_email=env.get("MIDM_ADMIN_EMAIL") or None,
            admin_password=env.get("MIDM_ADMIN_PASSWORD") or None,
            variables=tuple(name for name in SEED_VARIABLES if env.get(name)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    db_path: Path
    files_dir: Path
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    token_ttl_s: int = DEFAULT_TOKEN_TTL_S
    checkin_interval_s: int = DEFAULT_CHECKIN_INTERVAL_S
    checkin_flush_s: float = 2.0
    trusted_proxies: tuple[Network, ...] = ()  # peers whose X-Forwarded-For names the client
    max_connections: int = MAX_CONNECTIONS  # also held FD_RESERVE below the open-files limit
    header_timeout_s: float = HEADER_TIMEOUT_S
    keepalive_s: float = KEEPALIVE_S
    body_idle_s: float = BODY_IDLE_S  # server.bodies: a body with no byte for this long is refused
    seed: SeedSite = SeedSite()

    @classmethod
    def for_db(cls, db_path: Path, **overrides: object) -> ServerConfig:
        files_dir = overrides.pop("files_dir", None) or db_path.with_name(db_path.name + ".files")
        return cls(db_path=db_path, files_dir=Path(str(files_dir)), **overrides)  # type: ignore[arg-type]
