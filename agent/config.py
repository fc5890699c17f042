"""The agent's settings: one dataclass built once by the CLI; the only reader of os.environ.

Precedence: defaults < `--config agent.toml` < environment (MIDM_*) < command-line flags.
TOML keys are the field names below (`server`, `api_key`, `state_dir`, `platform`, ...,
`ota_certs`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

PLATFORMS = ("linux", "android", "simulated")
ENV = {
    "MIDM_SERVER": "server",
    "MIDM_API_KEY": "api_key",
    "MIDM_STATE_DIR": "state_dir",
    "MIDM_PLATFORM": "platform",
    "MIDM_ADMIN_EMAIL": "admin_email",
    "MIDM_ADMIN_PASSWORD": "admin_password",
    "MIDM_OTA_CERTS": "ota_certs",
}
DEVICE_CERTS = "device"  # --ota-certs device: an Android device's own otacerts


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    server: str = ""
    api_key: str = ""
    state_dir: Path = Path("midm-agent-state")
    platform: str = "linux"
    admin_email: str = ""
    admin_password: str = field(default="", repr=False)
    checkin_interval_s: float = 60.0  # until the server says otherwise
    request_timeout_s: float = 10.0
    push: bool = True
    # a `sync` on the push channel is answered after a random 0..sync_spread_s seconds, so that
    # a fleet told of one profile edit at once does not check in within the same millisecond
    # (0: at once, the default on a rig; the simulator sets it per kind)
    sync_spread_s: float = 0.0
    tls_verify: bool = True
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    apk_dir: Path | None = None
    facts: Path | None = None
    ac_online: str = "auto"
    adb: str = "adb"
    adb_device: str | None = None
    # images must be signed by one of these (agent.runtime.image_trust): a PEM file, a folder of
    # them, or `device` (android: the device's own otacerts); "": no check, as before
    ota_certs: str = ""

    def check(self) -> AgentConfig:
        if not self.server:
            raise ConfigError("no server: give --server URL (or MIDM_SERVER)")
        if not self.server.startswith(("http://", "https://")):
            raise ConfigError(f"--server {self.server!r}: must start with http:// or https://")
        if not self.api_key:
            raise ConfigError("no API key: give --api-key KEY (or MIDM_API_KEY)")
        if self.platform not in PLATFORMS:
            raise ConfigError(f"--platform {self.platform!r}: one of {', '.join(PLATFORMS)}")
        if self.ac_online not in ("auto", "yes", "no"):
            raise ConfigError(f"--ac-online {self.ac_online!r}: one of auto, yes, no")
        if self.ota_certs == DEVICE_CERTS and self.platform != "android":
            raise ConfigError(
                f"--ota-certs {DEVICE_CERTS}: the device's own certificates are read only with "
                "--platform android; give a PEM file or a folder of them"
            )
        if bool(self.admin_email) != bool(self.admin_password):
            raise ConfigError("admin credentials need both an email and a password")
        for name in ("checkin_interval_s", "request_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if not 0 <= self.sync_spread_s <= 3600:
            raise ConfigError(f"sync_spread_s {self.sync_spread_s}: between 0 and 3600 seconds")
        return self


def _coerce(name: str, value: Any) -> Any:
    kinds = {f.name: f.type for f in fields(AgentConfig)}
    kind = str(kinds[name])
    if value is None:
        return None
    if "Path" in kind:
        return Path(str(value)).expanduser()
    if kind == "bool":
        if isinstance(value, bool):
            return value
        return str(value).lower() in ("1", "true", "yes", "on")
    if kind == "float":
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name}: {value!r} is not a number") from exc
    return str(value)


def from_toml(path: Path) -> dict[str, Any]:
    try:
        values = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from exc
    known = {f.name for f in fields(AgentConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"--config {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    return {k: _coerce(k, v) for k, v in values.items()}


def load(
    flags: Mapping[str, Any], config_file: Path | None, env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Merge the layers; `flags` holds only what was given on the command line."""
    env = os.environ if env is None else env
    merged: dict[str, Any] = {}
    if config_file is not None:
        merged.update(from_toml(config_file))
    for variable, name in ENV.items():
        if env.get(variable):
            merged[name] = _coerce(name, env[variable])
    merged.update({k: _coerce(k, v) for k, v in flags.items() if v is not None})
    return replace(AgentConfig(), **merged)
