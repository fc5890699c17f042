"""An image's `otaInfo` (§4): what the zip's metadata says, overridden by the `otaInfo` form field.

Mapping from META-INF/com/android/metadata: `ota-type` AB -> abUpdate, `pre-device` -> deviceId
(the first, when several are `|`-separated), `pre-build` -> preBuild, `post-build` -> postBuild,
`post-timestamp` -> buildDate. Decisions [ours]: unknown otaInfo keys are 40001 (typos would
otherwise be silently stored); `type` defaults to `base`; after merging, `deviceId` and
`postBuild` must be non-empty, since an image without them can never be fed.
`otaCert` of a signed package is its signer's certificate (PEM), read from its whole-file
signature by the upload parser; an otaInfo field naming another is 40001 (the form cannot claim
a signer the package does not have; an empty one leaves the signer's). An unsigned package's
otaCert is the form's, unverified, as before; agents never trust otaCert: they verify the file
itself (§4, §8 --ota-certs).
"""

from __future__ import annotations

from typing import Any

from server.domain.validation import check_value, loads_json
from server.errors import InvalidField

STRING_FIELDS = (
    "deviceId",
    "productId",
    "skuId",
    "displayId",
    "osVersion",
    "preBuild",
    "postBuild",
    "customerId",
    "customer",
    "brand",
    "scriptVersion",
    "partNo",
    "marketName1",
    "marketName2",
    "buildTags",
    "buildType",
    "securityPath",
    "otaCert",
)
TYPES = ("base", "region")


def from_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = dict.fromkeys(STRING_FIELDS, "")
    devices = meta.get("pre_devices") or []
    info.update(
        {
            "type": "base",
            "abUpdate": bool(meta.get("ab_update")),
            "deviceId": devices[0] if devices else "",
            "preBuild": meta.get("pre_build") or "",
            "postBuild": meta.get("post_build") or "",
            "buildDate": meta.get("post_timestamp"),
            "sdk": "",
            "otaCert": meta.get("ota_cert") or "",
        }
    )
    return info


def merge_form(info: dict[str, Any], raw: str | None) -> dict[str, Any]:
    """Apply the `otaInfo` form field (a JSON object) over `info`; validate the result."""
    merged = dict(info)
    if raw is not None and raw.strip():
        given = loads_json(raw, "otaInfo", not_json=InvalidField)
        check_value(given, "otaInfo")
        if not isinstance(given, dict):
            raise InvalidField("otaInfo: must be a JSON object")
        for key, value in given.items():
            merged[key] = _checked(key, value)
        signer = info.get("otaCert") or ""
        if signer:
            if merged["otaCert"].strip() not in ("", signer.strip()):
                raise InvalidField(
                    "otaInfo.otaCert: the package is signed; otaCert is its signer's "
                    "certificate, read from the signature, and cannot be set to another"
                )
            merged["otaCert"] = signer
    if merged["type"] not in TYPES:
        raise InvalidField(f"otaInfo.type: must be base or region, not {merged['type']!r}")
    for key in ("deviceId", "postBuild"):
        if not merged[key]:
            raise InvalidField(
                f"otaInfo.{key}: not in the package's metadata; give it in the otaInfo field"
            )
    return merged


def _checked(key: str, value: Any) -> Any:
    if key in STRING_FIELDS or key == "type":
        if value is None:
            return ""
        if not isinstance(value, str):
            raise InvalidField(f"otaInfo.{key}: must be a string")
        return value
    if key == "abUpdate":
        if not isinstance(value, bool):
            raise InvalidField("otaInfo.abUpdate: must be true or false")
        return value
    if key == "buildDate":
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise InvalidField("otaInfo.buildDate: must be seconds since the epoch (an integer)")
        return value
    if key == "sdk":
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise InvalidField("otaInfo.sdk: must be a string or an integer")
        return str(value)
    raise InvalidField(f"otaInfo.{key}: unknown field")
