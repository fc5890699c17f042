"""Read an APK's identity (package, label, versions, SDKs, signing certificate) with androguard.

The one parser of the APK format in this project: the agent's inventory and the server's app
upload both call `read_apk_metadata`. androguard is imported inside the function (it costs
~0.5 s and ~40 MB), and its loguru output is disabled on first use.

Rules (see ../shared/android-notes.md):
- SDK versions are strings, "" when the manifest has none; versionCode is an int, 0 when the
  manifest has none (Android installs such an APK as version 0; aapt prints versionCode='').
- The label is resolved through resources.arsc; an empty label, or one still starting with "@",
  falls back to the package name.
- certMd5 is the lowercase hex MD5 of the DER signing certificate, preferring v3, then v2, then
  the v1 signer's certificate; "" for an unsigned APK (callers decide whether that is allowed).
- `verify_signatures=True` (the server's uploads): every signature scheme present is verified by
  midm_common.apk_signature (v3, v2, v1; an unsigned APK, or one whose signature does not verify,
  is ApkError naming the scheme) and certMd5 is the verified signer's. The agent reads installed
  or already-verified APKs and leaves it off: its inventory reports what androguard reads.
- versionCode is a decimal or 0x-hex integer of 0 to 2^31-1 (Android's int); anything else,
  a string "9223372036854775808" say, is ApkError naming versionCode.

Hostile zips (midm_common.zipguard, within the caller's `ZipLimits`): the entries are counted
before androguard's zip reader builds its table, and every entry androguard reads (manifest,
resources.arsc, v1 signature files) is inflated by our bounded reader, never by androguard, so
a bomb is refused within its entry's limit, naming the entry. Whatever else androguard raises
on a malformed file is ApkError too: a reader of untrusted files raises nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midm_common import zipguard
from midm_common.arsc import resolve_string
from midm_common.errors import ApkError
from midm_common.zipguard import DEFAULT_LIMITS, ZipLimits

MAX_VERSION_CODE = 2**31 - 1  # Android's versionCode is a Java int
_VERSION_CODE = re.compile(r"(?:[0-9]{1,10}|0[xX][0-9a-fA-F]{1,8})", re.ASCII)
_V1_SIGNER = re.compile(r"\AMETA-INF/(?s:.)*\.(DSA|EC|RSA)\Z")  # androguard's own pattern


@dataclass(frozen=True, slots=True, kw_only=True)
class ApkMetadata:
    package_name: str
    label: str
    version_code: int
    version_name: str
    min_sdk_version: str
    target_sdk_version: str
    max_sdk_version: str
    cert_md5: str
    size: int


_androguard_quiet = False


def _load_apk_class() -> Any:
    global _androguard_quiet
    if not _androguard_quiet:
        from androguard.core import androconf
        from loguru import logger

        logger.disable("androguard")
        # APK() reloads the AOSP permission tables (JSON) for every file: about half of the
        # time of a small APK. They never change; load each (resource, api) once.
        androconf.load_api_specific_resource_module = functools.lru_cache(maxsize=64)(
            androconf.load_api_specific_resource_module
        )
        _androguard_quiet = True
    from androguard.core.apk import APK

    return APK


class _BoundedEntries:
    """Stands in for apkInspector's ZipEntry inside androguard's APK: the same table, but each
    read goes through zipguard's bounded reader. The data is located as apkInspector does (the
    local header's sizes unless one is 0, then the central directory's; a method other than
    stored/deflate taken as stored or deflate by the sizes), so both agree on what an entry is."""

    def __init__(self, inner: Any, limits: ZipLimits, archive: str) -> None:
        self.inner = inner
        self.zip = inner.zip  # the file's bytes (androguard's get_raw reads them here)
        self.limits = limits
        self.archive = archive
        self._names: list[str] = list(inner.central_directory.entries)
        self._name_set = frozenset(self._names)

    def namelist(self) -> list[str]:
        return list(self._names)

    def infolist(self) -> Any:
        return self.inner.infolist()

    def __contains__(self, name: str) -> bool:
        return name in self._name_set

    def signer_files(self) -> list[str]:
        """v1 signer blocks with their .SF (androguard's rule, without its quadratic scan)."""
        return [
            n
            for n in self._names
            if _V1_SIGNER.search(n) and f"{n.rsplit('.', 1)[0]}.SF" in self._name_set
        ]

    def read(self, name: str, save: bool = False) -> bytes:
        central = self.inner.central_directory.entries[name]  # KeyError: androguard's "absent"
        local = self.inner.local_headers[name]
        if local.compressed_size == 0 or local.uncompressed_size == 0:
            compressed, inflated = central.compressed_size, central.uncompressed_size
        else:
            compressed, inflated = local.compressed_size, local.uncompressed_size
        limit, error = self.limits.entry_limit(name), ApkError
        method = local.compression_method
        for declared in (inflated, central.uncompressed_size):
            zipguard.check_declared(
                zipguard.Declared(
                    method=method, compressed_size=compressed, uncompressed_size=declared
                ),
                name,
                limit,
                self.limits,
                error,
                self.archive,
            )
        start = (
            central.relative_offset_of_local_file_header
            + 30
            + local.file_name_length
            + local.extra_field_length
        )
        read = zipguard.file_reader(self.zip, start)
        if method == zipguard.STORED or (method != zipguard.DEFLATED and compressed == inflated):
            return zipguard.read_stored(read, inflated, name, limit, error, self.archive)
        try:
            return zipguard.inflate(read, compressed, name, limit, self.limits, error, self.archive)
        except ApkError as exc:
            if method == zipguard.DEFLATED or exc.reason == "over_limit":
                raise
        # apkInspector's "tampered" case: not a clean deflate stream, so taken as stored
        read = zipguard.file_reader(self.zip, start)
        return zipguard.read_stored(read, inflated, name, limit, error, self.archive)


def _cert_md5(apk: Any, entries: _BoundedEntries) -> str:
    for getter in ("get_certificates_der_v3", "get_certificates_der_v2"):
        ders = getattr(apk, getter)()
        if ders:
            return hashlib.md5(ders[0], usedforsecurity=False).hexdigest()
    for name in entries.signer_files():
        der = apk.get_certificate_der(name)
        if der:
            return hashlib.md5(der, usedforsecurity=False).hexdigest()
    return ""


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _label(apk: Any) -> str:
    """The application label: a literal, or a string resource resolved with the small ARSC
    reader (midm_common.arsc), else with androguard's full resource analysis."""
    try:
        raw = apk.get_attribute_value("application", "label")
        if raw and raw.startswith("@") and ":" not in raw:
            arsc = apk.get_file("resources.arsc")
            if arsc:
                found = resolve_string(arsc, int(raw[1:], 16))
                if found:
                    return found
        elif raw and not raw.startswith("@"):
            return str(raw)
        return _text(apk.get_app_name())
    except ApkError:
        raise  # resources.arsc over a limit: refused, not a silent fallback
    except Exception:  # noqa: BLE001 - androguard's resource parser raises many types; label falls back
        return ""


def _version_code(raw: str, archive: str) -> int:
    text = raw.strip()
    if not text:
        return 0
    if not _VERSION_CODE.fullmatch(text):
        raise ApkError(
            f"{archive}: versionCode {raw[:40]!r} is not an integer of 0 to {MAX_VERSION_CODE}",
            reason="bad_manifest",
        )
    value = int(text, 16) if text[:2] in ("0x", "0X") else int(text)
    if value > MAX_VERSION_CODE:
        raise ApkError(
            f"{archive}: versionCode {value} is over Android's limit of {MAX_VERSION_CODE}",
            reason="bad_manifest",
        )
    return value


def _open(apk_class: Any, path: Path, size: int, limits: ZipLimits) -> tuple[Any, _BoundedEntries]:
    """androguard's APK over our bounded reader, its manifest analysed."""
    with path.open("rb") as handle:
        zipguard.count_apk_entries(handle, size, limits, ApkError, path.name)
    try:
        apk = apk_class(str(path), skip_analysis=True)
    except Exception as exc:  # apkInspector raises many types on a malformed zip
        raise ApkError(
            f"{path.name}: not a zip archive or truncated ({exc})", reason="bad_zip"
        ) from exc
    entries = _BoundedEntries(apk.zip, limits, path.name)
    apk.zip = entries
    try:
        apk._apk_analysis()
    except ApkError:
        raise
    except Exception as exc:  # androguard's AXML parser raises many types
        raise ApkError(
            f"{path.name}: unreadable manifest ({exc!r})", reason="bad_manifest"
        ) from exc
    return apk, entries


def _verified_cert_md5(
    path: Path, size: int, target_sdk: str, min_sdk: str, limits: ZipLimits
) -> str:
    """certMd5 of the signer that verified; ApkError naming the scheme that did not."""
    from midm_common.apk_signature import verify_apk

    declared = target_sdk or min_sdk  # Android's targetSdkVersion defaults to minSdkVersion
    target = int(declared) if declared.isascii() and declared.isdigit() else None
    try:
        with path.open("rb") as handle:
            verified = verify_apk(handle, size, archive=path.name, target_sdk=target, limits=limits)
    except OSError as exc:
        raise ApkError(
            f"{path.name}: cannot read file ({exc.strerror})", reason="unreadable"
        ) from exc
    return verified.cert_md5


def read_apk_metadata(
    path: Path, limits: ZipLimits = DEFAULT_LIMITS, *, verify_signatures: bool = False
) -> ApkMetadata:
    """Parse the APK at `path`; raise ApkError naming the file and the reason. With
    `verify_signatures`, its signatures are verified and certMd5 is the verified signer's."""
    apk_class = _load_apk_class()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ApkError(
            f"{path.name}: cannot read file ({exc.strerror})", reason="unreadable"
        ) from exc
    if size == 0:
        raise ApkError(f"{path.name}: file is empty", reason="empty")
    apk, entries = _open(apk_class, path, size, limits)
    if not apk.is_valid_APK():
        raise ApkError(f"{path.name}: no readable AndroidManifest.xml", reason="no_manifest")
    try:
        package = _text(apk.get_package())
        raw_code = _text(apk.get_androidversion_code())
        version_name = _text(apk.get_androidversion_name())
        min_sdk = _text(apk.get_min_sdk_version())
        target_sdk = _text(apk.get_target_sdk_version())
        max_sdk = _text(apk.get_max_sdk_version())
        cert = _cert_md5(apk, entries)
    except ApkError:
        raise
    except Exception as exc:  # androguard raises many types on hostile input
        raise ApkError(
            f"{path.name}: unreadable manifest or signature ({exc!r})", reason="bad_manifest"
        ) from exc
    if not package:
        raise ApkError(f"{path.name}: manifest has no package name", reason="bad_manifest")
    version_code = _version_code(raw_code, path.name)
    if verify_signatures:
        cert = _verified_cert_md5(path, size, target_sdk, min_sdk, limits)
    label = _label(apk)
    if not label or label.startswith("@"):
        label = package
    return ApkMetadata(
        package_name=package,
        label=label,
        version_code=version_code,
        version_name=version_name,
        min_sdk_version=min_sdk,
        target_sdk_version=target_sdk,
        max_sdk_version=max_sdk,
        cert_md5=cert,
        size=size,
    )
