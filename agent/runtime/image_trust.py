"""Which OTA images the agent installs: those signed by a certificate of `--ota-certs` (§4, §8).

- `--ota-certs` not set: no signature check; every image the server feeds (and the agent finds
  to be for this device) is installed, as before. The server refused a package whose signature
  block does not verify at upload, but an unsigned package, or one signed by any key, passes.
- A PEM file, or a folder of them (every `*.pem` and `*.crt` in it, not its sub-folders), read
  once when the agent starts; one that cannot be read or holds anything but PEM certificates
  is a ConfigError naming the file (the CLI's one line, exit 2), as is a folder with none.
- `device` (android only): the device's own /system/etc/security/otacerts.zip, what its recovery
  trusts, read through the platform at the first image and kept (a failed read is retried at the
  next image; that image fails with the platform's error, never installed).
Trust is by public key, as Android's RecoverySystem: an image is installed only when its
whole-file signature verifies (midm_common.ota_signature, read with the image's metadata once per
content) and the signer's SubjectPublicKeyInfo is one of the trusted certificates'. Otherwise the
image is `failed` with reason `bad_signature` and never installed. A simulated fleet keeps no
image bytes per device; its metadata, signature included, is read from the fleet's stored copy of
the content, whose sha256 is the one the device computed as it streamed (the same bytes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from agent.config import DEVICE_CERTS, AgentConfig
from agent.errors import ConfigError, PlatformError
from midm_common.ota_signature import OtaSignature, trusted_by, trusted_keys_of_pem

MAX_CERT_FILE_BYTES = 1 << 20  # one PEM file of --ota-certs
MAX_CERT_FILES = 256  # PEM files in a folder of --ota-certs
CERT_SUFFIXES = (".pem", ".crt")

KeyLoader = Callable[[], Awaitable[frozenset[bytes]]]


class ImageTrust:
    """The keys images must be signed by: given, or loaded on first use (the device's)."""

    __slots__ = ("_keys", "_load", "source")

    def __init__(
        self, source: str, keys: frozenset[bytes] | None = None, load: KeyLoader | None = None
    ) -> None:
        if keys is None and load is None:
            raise ValueError("ImageTrust needs keys or a loader")
        self.source = source  # what the keys are, for the logs
        self._keys = keys
        self._load = load

    async def keys(self) -> frozenset[bytes]:
        if self._keys is None:
            assert self._load is not None
            self._keys = await self._load()
        return self._keys

    async def problem(self, signature: OtaSignature) -> str:
        """Why an image with `signature` may not be installed; "" when it may."""
        return trusted_by(signature, await self.keys())


def read_pem_keys(path: Path) -> frozenset[bytes]:
    """The public keys of the certificates in a PEM file, or in the PEM files of a folder."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in CERT_SUFFIXES and p.is_file())
        if not files:
            raise ConfigError(f"--ota-certs {path}: no {' or '.join(CERT_SUFFIXES)} files there")
        if len(files) > MAX_CERT_FILES:
            raise ConfigError(f"--ota-certs {path}: more than {MAX_CERT_FILES} certificate files")
    else:
        files = [path]
    keys: set[bytes] = set()
    for file in files:
        keys |= _file_keys(file)
    return frozenset(keys)


def _file_keys(file: Path) -> frozenset[bytes]:
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_CERT_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"--ota-certs {file}: cannot read ({exc.strerror})") from exc
    if len(data) > MAX_CERT_FILE_BYTES:
        raise ConfigError(f"--ota-certs {file}: over {MAX_CERT_FILE_BYTES} bytes")
    try:
        return trusted_keys_of_pem(data)
    except ValueError as exc:
        raise ConfigError(f"--ota-certs {file}: not PEM certificates ({exc})") from exc


def image_trust(config: AgentConfig, platform: object) -> ImageTrust | None:
    """The trust `config.ota_certs` asks for; None when images are not checked."""
    if not config.ota_certs:
        return None
    if config.ota_certs == DEVICE_CERTS:
        load = getattr(platform, "ota_certificates", None)
        if load is None:
            raise ConfigError(
                f"--ota-certs {DEVICE_CERTS}: platform {config.platform} has no certificates of "
                "its own; give a PEM file or a folder of them"
            )
        return ImageTrust("device otacerts", load=_device_loader(load))
    path = Path(config.ota_certs).expanduser()
    return ImageTrust(str(path), keys=read_pem_keys(path))


def _device_loader(load: KeyLoader) -> KeyLoader:
    async def keys() -> frozenset[bytes]:
        found = await load()
        if not found:
            raise PlatformError("the device's otacerts hold no certificate")
        return found

    return keys
