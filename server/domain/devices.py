"""Device save bodies (§3) parsed into typed inputs; a whole batch is validated before any write.

Rules: the body is a non-empty list (at most MAX_DEVICE_BATCH items);
`profile.hardware_info.serial_no` is a required serial (below); a serial appearing twice in one
body is 40001; `enabled` defaults to true; `groupUuid` is optional (its existence is checked by
the store, in the same transaction).
Admin reads name one device by `deviceUuid` (or `uuid`) or by `serialNo` in the query.

Serial numbers follow one rule wherever they enter (device/save, agent/register, a profile's
`scope.device`): `parse_serial`, a non-empty string of at most MAX_SERIAL characters
(server.limits; counted before stripping surrounding spaces, which are not kept).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from server.domain.validation import Fields, expect_list, join, json_type
from server.errors import InvalidField
from server.limits import MAX_DEVICE_BATCH, MAX_SERIAL


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareInfo:
    serial_no: str
    manufacturer: str = ""
    brand: str = ""
    model: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "serial_no": self.serial_no,
            "manufacturer": self.manufacturer,
            "brand": self.brand,
            "model": self.model,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceInput:
    hardware: HardwareInfo
    enabled: bool
    group_uuid: str | None


def parse_serial(value: Any, path: str) -> str:
    """A serial number named `path` in messages: the same rule everywhere (module doc)."""
    if value is None:
        raise InvalidField(f"{path}: is required")
    if not isinstance(value, str):
        raise InvalidField(f"{path}: must be a string, not {json_type(value)}")
    if len(value) > MAX_SERIAL:
        raise InvalidField(f"{path}: longer than {MAX_SERIAL} characters")
    serial = value.strip()
    if not serial:
        raise InvalidField(f"{path}: must not be empty")
    return serial


def parse_hardware_info(fields: Fields) -> HardwareInfo:
    return HardwareInfo(
        serial_no=parse_serial(fields.obj.get("serial_no"), fields.name("serial_no")),
        manufacturer=fields.string("manufacturer", max_len=256),
        brand=fields.string("brand", max_len=256),
        model=fields.string("model", max_len=256),
    )


def parse_device_batch(body: Any) -> list[DeviceInput]:
    items = expect_list(body, "device save body")
    if not items:
        raise InvalidField("body: the list of devices is empty")
    if len(items) > MAX_DEVICE_BATCH:
        raise InvalidField(f"body: at most {MAX_DEVICE_BATCH} devices per save, got {len(items)}")
    devices: list[DeviceInput] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        fields = Fields(item, join("", index))
        hardware = parse_hardware_info(
            fields.obj_field("profile", required=True).obj_field("hardware_info", required=True)
        )
        if hardware.serial_no in seen:
            raise InvalidField(
                f"[{index}].profile.hardware_info.serial_no: {hardware.serial_no!r} appears twice "
                f"in one save (also at [{seen[hardware.serial_no]}])"
            )
        seen[hardware.serial_no] = index
        group = fields.optional_string("groupUuid", max_len=64)
        devices.append(
            DeviceInput(
                hardware=hardware,
                enabled=fields.boolean("enabled", default=True),
                group_uuid=group or None,
            )
        )
    return devices


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceLookup:
    """One device named in a query: by uuid when given, else by serial."""

    uuid: str | None
    serial: str | None

    def describe(self) -> str:
        return f"uuid {self.uuid!r}" if self.uuid else f"serial {self.serial!r}"


def parse_device_lookup(query: Mapping[str, str]) -> DeviceLookup:
    device_uuid = query.get("deviceUuid") or query.get("uuid")
    serial = query.get("serialNo")
    if not device_uuid and not serial:
        raise InvalidField("deviceUuid or serialNo: one of these query parameters is required")
    return DeviceLookup(uuid=device_uuid or None, serial=None if device_uuid else serial or None)
