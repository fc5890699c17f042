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
"""

from __future__ import annotations

import functools
import hashlib
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midm_common.arsc import resolve_string
from midm_common.errors import ApkError


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


def _cert_md5(apk: Any) -> str:
    for getter in ("get_certificates_der_v3", "get_certificates_der_v2"):
        ders = getattr(apk, getter)()
        if ders:
            return hashlib.md5(ders[0], usedforsecurity=False).hexdigest()
    for name in apk.get_signature_names():
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
    except Exception:  # noqa: BLE001 - androguard's resource parser raises many types; label falls back
        return ""


def read_apk_metadata(path: Path) -> ApkMetadata:
    """Parse the APK at `path`; raise ApkError naming the file and the reason."""
    apk_class = _load_apk_class()
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ApkError(
            f"{path.name}: cannot read file ({exc.strerror})", reason="unreadable"
        ) from exc
    if size == 0:
        raise ApkError(f"{path.name}: file is empty", reason="empty")
    try:
        apk = apk_class(str(path))
    except (ValueError, zipfile.BadZipFile, zlib.error, struct.error, EOFError) as exc:
        raise ApkError(
            f"{path.name}: not a zip archive or truncated ({exc})", reason="bad_zip"
        ) from exc
    if not apk.is_valid_APK():
        raise ApkError(f"{path.name}: no readable AndroidManifest.xml", reason="no_manifest")
    try:
        package = _text(apk.get_package())
        raw_code = _text(apk.get_androidversion_code())
        version_name = _text(apk.get_androidversion_name())
        min_sdk = _text(apk.get_min_sdk_version())
        target_sdk = _text(apk.get_target_sdk_version())
        max_sdk = _text(apk.get_max_sdk_version())
        cert = _cert_md5(apk)
    except (KeyError, ValueError, struct.error, zlib.error, zipfile.BadZipFile) as exc:
        raise ApkError(
            f"{path.name}: unreadable manifest ({exc!r})", reason="bad_manifest"
        ) from exc
    if not package:
        raise ApkError(f"{path.name}: manifest has no package name", reason="bad_manifest")
    try:
        version_code = int(raw_code) if raw_code.strip() else 0
    except ValueError as exc:
        raise ApkError(
            f"{path.name}: versionCode {raw_code!r} is not an integer", reason="bad_manifest"
        ) from exc
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
