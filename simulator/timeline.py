"""The admin timeline: a plan's AdminActions run at their times through the admin client.

`setup()` runs before the fleet starts (scenario time 0): it generates every artifact the plan
uploads (off the event loop), runs the actions at `at_s` 0 (the groups devices are saved in, and
whatever else is due at once), then saves every planned device in bulk into its kind's group, so
that agents need only register (a serial two planned devices share is saved once, as the
first's). `run(stop)` runs the rest in time order, each at `t0 + at_s` on
the admin client's Clock (the runner's ScaledClock, the agents' too; a FakeClock in tests), the
first request of each action intended at that time. Names are resolved to the server's uuids
as they are created. An action the server refuses during the run is recorded (the admin
request's error goes to the metrics too) and the timeline goes on; a failure in setup is
raised: the run cannot be done. `restart_server` asks the `server` it was given (the embedded
server: simulator/embedded.py) to stop and start again, down for `down_s` scenario seconds
(the actions due meanwhile run after it, late by its length, as an admin's would); without one
(a --target run, which the runner refuses first) the action fails with that reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from agent.clock import Clock, Waitable
from simulator.admin import AdminClient, AdminError, device_body
from simulator.errors import RunError
from simulator.gen import build_apk, build_ota
from simulator.plan.model import ActionKind, AdminAction, Plan, PlannedDevice, json_value

log = structlog.get_logger("simulator.timeline")


class Restartable(Protocol):
    """What restart_server restarts (simulator.embedded.EmbeddedServer)."""

    async def restart(self, *, down_s: float = 0.0) -> float: ...


class Artifacts(Protocol):
    """Makes the bytes an upload action sends (args as in simulator/plan/model.py)."""

    def apk(self, args: Mapping[str, Any]) -> bytes: ...

    def ota(self, args: Mapping[str, Any]) -> bytes: ...


class GeneratedArtifacts:
    """Real signed APKs and OTA zips from simulator.gen."""

    def apk(self, args: Mapping[str, Any]) -> bytes:
        return build_apk(
            package=args["package"],
            version_code=args["version_code"],
            version_name=args["version_name"],
            label=args["label"],
        )

    def ota(self, args: Mapping[str, Any]) -> bytes:
        return build_ota(
            device=args["device_id"],
            post_build=args["post_build"],
            post_timestamp=args["build_date"],
            pre_build=args["pre_build"],
            ab=args["ab_update"],
            payload_size=max(int(args["size_kb"]) * 1024, 1),
        )


def ota_info(args: Mapping[str, Any]) -> dict[str, Any]:
    """The `otaInfo` form field of an upload: what the zip's metadata does not say."""
    info: dict[str, Any] = {"type": args["type"], "deviceId": args["device_id"]}
    if args.get("product_id"):
        info["productId"] = args["product_id"]
    if args.get("sku_id"):
        info["skuId"] = args["sku_id"]
    return info


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionResult:
    """How one action went: `started_s` is scenario seconds after t0 (lateness = started_s -
    at_s), `uuid` the server's id of what it made or changed (the runner tells the metrics a
    profile's uuid from it), `error` the one-line reason it failed, or None."""

    at_s: float
    action: ActionKind
    name: str
    started_s: float
    duration_s: float
    uuid: str | None = None  # what it made or changed: group, fileUuid, profile
    error: str | None = None


def _label(action: AdminAction) -> str:
    args = action.args
    if action.action is ActionKind.RESAVE_DEVICES:
        return f"{len(args.get('serials') or ())} devices"
    if action.action is ActionKind.RESTART_SERVER:
        return f"down {float(args.get('down_s') or 0.0):g} s"
    return str(args.get("name", ""))


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`changes` merged into `base`: tables key by key, any other value (lists too) replaced."""
    merged = dict(base)
    for key, value in changes.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = merge(current, value)
        else:
            merged[key] = value
    return merged


class Timeline:
    """Runs one plan's admin timeline. `groups`, `apps`, `otas`, `profiles` map the scenario's
    names to the server's uuids (fileUuid for apps and images) once created; `resaved` holds the
    serials saved again; `results` one ActionResult per action run (also given to `on_action`,
    e.g. the progress display's)."""

    def __init__(
        self,
        plan: Plan,
        admin: AdminClient,
        *,
        artifacts: Artifacts | None = None,
        on_action: Callable[[ActionResult], None] | None = None,
        server: Restartable | None = None,
    ) -> None:
        self.plan, self.admin = plan, admin
        self.server = server
        self.clock: Clock = admin.clock  # one clock for the schedule and the requests' times
        self.on_action = on_action
        self.artifacts: Artifacts = artifacts or GeneratedArtifacts()
        self.groups: dict[str, str] = {}
        self.apps: dict[str, str] = {}
        self.otas: dict[str, str] = {}
        self.profiles: dict[str, str] = {}
        self.resaved: set[str] = set()
        self.results: list[ActionResult] = []
        self._blobs: dict[int, bytes] = {}
        self._devices = {d.serial: d for d in plan.devices}
        self._t0 = 0.0
        self._done = 0  # actions run so far (setup's first)

    # -- setup ---------------------------------------------------------------------------

    async def setup(self, devices: Iterable[PlannedDevice] | None = None) -> int:
        """Artifacts, the actions at t = 0, then `devices` (default: all planned) saved in
        bulk; returns how many devices were saved. Raises AdminError when any step fails."""
        uploads = [
            (i, a)
            for i, a in enumerate(self.plan.timeline)
            if a.action in (ActionKind.UPLOAD_APP, ActionKind.UPLOAD_OTA)
        ]
        for i, action in uploads:
            make = (
                self.artifacts.apk if action.action is ActionKind.UPLOAD_APP else self.artifacts.ota
            )
            self._blobs[i] = await asyncio.to_thread(make, action.args)
        self._t0 = self.clock.monotonic()
        while self._done < len(self.plan.timeline) and self.plan.timeline[self._done].at_s <= 0:
            result = await self._run_one(self._done, self.plan.timeline[self._done])
            if result.error is not None:
                raise AdminError(f"timeline at 0 s, {result.action} {result.name}: {result.error}")
        chosen = self.plan.devices if devices is None else devices
        unique: dict[str, PlannedDevice] = {}
        for device in chosen:  # a serial two devices share is saved once
            unique.setdefault(device.serial, device)
        saved = await self.admin.save_devices(self._device_body(d) for d in unique.values())
        log.info("timeline.devices_saved", devices=saved)
        return saved

    def _device_body(self, device: PlannedDevice) -> dict[str, Any]:
        kind = self.plan.kinds[device.kind]
        return device_body(
            device.serial,
            manufacturer=kind.manufacturer,
            brand=kind.brand,
            model=kind.model,
            group_uuid=self.groups[kind.group] if kind.group is not None else None,
        )

    # -- the run -------------------------------------------------------------------------

    async def run(self, stop: Waitable, *, t0: float | None = None) -> None:
        """Run the remaining actions at `t0 + at_s` (t0: now) until done or `stop` is set."""
        self._t0 = self.clock.monotonic() if t0 is None else t0
        while self._done < len(self.plan.timeline):
            action = self.plan.timeline[self._done]
            wait = self._t0 + action.at_s - self.clock.monotonic()
            if stop.is_set() or (wait > 0 and await self.clock.wait_for(stop, wait)):
                return
            await self._run_one(self._done, action)

    async def _run_one(self, index: int, action: AdminAction) -> ActionResult:
        self._done = index + 1
        intended = self._t0 + action.at_s
        started = self.clock.monotonic()
        error: str | None = None
        uuid: str | None = None
        with self.admin.intended_at(intended):
            try:
                uuid = await self._perform(index, action)
            except RunError as exc:  # AdminError, or a server that did not come back
                error = str(exc)
            except KeyError as exc:  # a name whose own action failed earlier
                error = f"{exc.args[0]!r} was not created (its action failed)"
        result = ActionResult(
            at_s=action.at_s,
            action=action.action,
            name=_label(action),
            started_s=started - self._t0,
            duration_s=self.clock.monotonic() - started,
            uuid=uuid,
            error=error,
        )
        self.results.append(result)
        if self.on_action is not None:
            self.on_action(result)
        event = log.warning if error else log.info
        event("timeline.action", action=str(action.action), name=result.name, error=error)
        return result

    async def _perform(self, index: int, action: AdminAction) -> str | None:
        """Run one action; the uuid of what it made or changed."""
        args = action.args
        kind = action.action
        if kind is ActionKind.CREATE_GROUP:
            parent = args.get("parent")
            group = await self.admin.save_group(
                args["name"],
                parent_uuid=self.groups[parent] if parent is not None else None,
                enabled=bool(args.get("enabled", True)),
            )
            self.groups[args["name"]] = uuid = str(group["uuid"])
        elif kind is ActionKind.UPLOAD_APP:
            filename = f"{args['package']}-{args['version_code']}.apk"
            app = await self.admin.upload_app(
                self._blob(index, action), filename, name=args["name"]
            )
            self.apps[args["name"]] = uuid = str(app["fileUuid"])
        elif kind is ActionKind.UPLOAD_OTA:
            ota = await self.admin.upload_ota(
                self._blob(index, action),
                f"{args['name']}.zip",
                ota_info=ota_info(args),
                name=args["name"],
            )
            self.otas[args["name"]] = uuid = str(ota["fileUuid"])
        elif kind is ActionKind.SAVE_PROFILE:
            saved = await self.admin.save_profile(self.resolve(args["body"]))
            self.profiles[args["name"]] = uuid = str(saved["uuid"])
        elif kind is ActionKind.EDIT_PROFILE:
            uuid = self.profiles[args["name"]]
            loaded = await self.admin.profile(uuid)
            await self.admin.edit_profile(uuid, merge(loaded, self.resolve(args["changes"])))
        elif kind is ActionKind.RESAVE_DEVICES:
            serials = [s for s in args.get("serials") or () if s in self._devices]
            await self.admin.save_devices(self._device_body(self._devices[s]) for s in serials)
            self.resaved.update(serials)
            return None
        elif kind is ActionKind.RESTART_SERVER:
            if self.server is None:
                raise RunError("restart_server: no embedded server to restart (a --target run)")
            down = await self.server.restart(down_s=float(args["down_s"]) / self.plan.time_scale)
            log.info("timeline.server_restarted", down_real_s=round(down, 3))
            return None
        else:  # revoke_tokens
            await self.admin.logout()
            await self.admin.login()
            return None
        return uuid

    def _blob(self, index: int, action: AdminAction) -> bytes:
        """The artifact made in setup (made now if this timeline had none)."""
        if index not in self._blobs:
            make = (
                self.artifacts.apk if action.action is ActionKind.UPLOAD_APP else self.artifacts.ota
            )
            self._blobs[index] = make(action.args)
        return self._blobs[index]

    def resolve(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """A profile body (or changes) with the scenario's names swapped for uuids:
        scope.group[], apps.install[].app -> uuid, otas[]."""
        resolved: dict[str, Any] = json_value(body)
        scope = resolved.get("scope")
        if isinstance(scope, dict) and "group" in scope:
            scope["group"] = [self.groups[name] for name in scope["group"]]
        apps = resolved.get("apps")
        if isinstance(apps, dict) and "install" in apps:
            installs = []
            for entry in apps["install"]:
                entry = dict(entry)
                entry["uuid"] = self.apps[entry.pop("app")]
                installs.append(entry)
            apps["install"] = installs
        if "otas" in resolved:
            resolved["otas"] = [self.otas[name] for name in resolved["otas"]]
        return resolved

    def statistics(self) -> dict[str, Any]:
        return {
            "actions": len(self.results),
            "failed": sum(1 for r in self.results if r.error is not None),
            "profiles": dict(self.profiles),
        }
