"""The admin client: the MiDM admin API (§2-5) over one aiohttp session, as the simulator uses it.

Logs in with the site's API key and an admin's email/password, then sends `X-API-Key` and
`Authorization: Bearer <token>` on every call. Each call is timed on the injected clock and
reported to the observer as an Exchange named `admin:<path after /ota/api/>` (`admin:auth`,
`admin:logout` for the portal). Devices are saved in bulk (`device/save`, up to 1000 a request),
so that agents need only register. Errors are translated at this edge:

    RunError (simulator.errors, exit 3)
    └── AdminError                 the admin API could not be used
        ├── TargetUnreachable      no connection, a timeout, or an answer that is no envelope
        └── AdminRefused(code, status, message, uq)   an error envelope
            ├── AdminUnauthorized (40100)   ├── AdminNotFound (40400)
            └── AdminConflict (40900)
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import aiohttp

from agent.clock import Clock, SystemClock
from agent.transport.base import Exchange, Observer, no_observer
from simulator.errors import RunError

API = "/ota/api/"
PORTAL = "/portal/V1/"
SAVE_BATCH = 1000  # devices per device/save request (the protocol's limit)
PAGE_SIZE = 500  # the protocol's largest page


class AdminError(RunError):
    hint = "check --target and the admin credentials (--api-key, --admin-email, --admin-password)"


class TargetUnreachable(AdminError):
    pass


class AdminRefused(AdminError):
    def __init__(self, path: str, *, code: int, status: int, message: str, uq: str = "") -> None:
        super().__init__(f"{path}: {message} (code {code}, HTTP {status})")
        self.path, self.code, self.status, self.message, self.uq = path, code, status, message, uq


class AdminUnauthorized(AdminRefused):
    pass


class AdminNotFound(AdminRefused):
    pass


class AdminConflict(AdminRefused):
    pass


_BY_CODE: Mapping[int, type[AdminRefused]] = {
    40100: AdminUnauthorized,
    40400: AdminNotFound,
    40900: AdminConflict,
}


def device_body(
    serial: str,
    *,
    manufacturer: str = "",
    brand: str = "",
    model: str = "",
    group_uuid: str | None = None,
    enabled: bool = True,
) -> dict[str, Any]:
    """One entry of a device/save body."""
    body: dict[str, Any] = {
        "profile": {
            "hardware_info": {
                "serial_no": serial,
                "manufacturer": manufacturer,
                "brand": brand,
                "model": model,
            }
        },
        "enabled": enabled,
    }
    if group_uuid is not None:
        body["groupUuid"] = group_uuid
    return body


class AdminClient:
    """An admin session on one site. Use `async with`: it logs in on entry and closes the
    session it made on exit (a session passed in stays the caller's)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str,
        email: str,
        password: str,
        observer: Observer = no_observer,
        clock: Clock | None = None,
        timeout_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key, self._email, self._password = api_key, email, password
        self.observer = observer
        self.clock: Clock = clock or SystemClock()
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._owns_session = session is None
        self.token: str | None = None
        self.saves: Counter[str] = Counter()  # device/save calls per serial
        self._intended: float | None = None

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            await self.login()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
        self._session = None

    @contextmanager
    def intended_at(self, when: float) -> Iterator[None]:
        """The next request (only the first) was meant to start at `when` (clock seconds): its
        Exchange is measured from then (the timeline's actions, no coordinated omission)."""
        self._intended = when
        try:
            yield
        finally:
            self._intended = None

    # -- the one request path ------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        form: aiohttp.FormData | None = None,
        bearer: bool = True,
    ) -> dict[str, Any]:
        """One request; the envelope of a successful answer, else an AdminError."""
        if self._session is None:
            raise AdminError("the admin client is not open (use `async with`)")
        headers = {"X-API-Key": self._api_key}
        if bearer and self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data: Any = form
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        name = "admin:" + (path.removeprefix(API) if path.startswith(API) else path.rsplit("/")[-1])
        started = self.clock.monotonic()
        intended = started if self._intended is None else min(self._intended, started)
        self._intended = None
        status, error = 0, None
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                params=params,
                data=data,
                headers=headers,
                timeout=self._timeout,
            ) as response:
                status = response.status
                raw = await response.read()
        except TimeoutError as exc:
            error = "timeout"
            raise TargetUnreachable(f"{self.base_url}{path}: no answer in time") from exc
        except aiohttp.ClientError as exc:
            error = type(exc).__name__
            raise TargetUnreachable(f"{self.base_url}{path}: {exc}") from exc
        finally:
            duration = self.clock.monotonic() - started
            self.observer(
                Exchange(
                    name=name,
                    intended=intended,
                    started=started,
                    duration=duration,
                    status=status,
                    error=error,
                )
            )
        return self._envelope(path, status, raw)

    def _envelope(self, path: str, status: int, raw: bytes) -> dict[str, Any]:
        try:
            envelope = json.loads(raw)
        except ValueError:
            envelope = None
        if not isinstance(envelope, dict) or "result" not in envelope or "code" not in envelope:
            raise TargetUnreachable(
                f"{self.base_url}{path}: HTTP {status} without a MiDM envelope "
                "(is this a MiDM backend?)"
            )
        if envelope["result"] is True and status < 400:
            return envelope
        code = int(envelope.get("code") or 0)
        raise _BY_CODE.get(code, AdminRefused)(
            path,
            code=code,
            status=status,
            message=str(envelope.get("message") or ""),
            uq=str(envelope.get("uq") or ""),
        )

    async def _data(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self.call(method, API + path, **kwargs)).get("data")

    async def _all_pages(
        self, path: str, filter_: Mapping[str, Any] | None = None, **params: str
    ) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        page = 0
        while True:
            query = {"page": str(page), "size": str(PAGE_SIZE), **params}
            if filter_:
                query["filter"] = json.dumps(filter_)
            envelope = await self.call("GET", API + path, params=query)
            data = envelope.get("data") or []
            rows.extend(data)
            page += 1
            if page >= int(envelope.get("totalPage") or 0) or not data:
                return rows

    # -- authentication ------------------------------------------------------------------

    async def login(self) -> None:
        body = {"email": self._email, "password": self._password, "type": "email"}
        envelope = await self.call("POST", PORTAL + "auth", body=body, bearer=False)
        data = envelope.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise TargetUnreachable(f"{self.base_url}{PORTAL}auth: no access_token in the answer")
        self.token = data["access_token"]

    async def logout(self) -> None:
        """Revoke the access token (the next call needs a new login)."""
        await self.call("GET", PORTAL + "logout")

    async def verify_token(self) -> dict[str, Any]:
        envelope = await self.call("GET", PORTAL + "auth/token-verify")
        return dict(envelope.get("data") or {})

    # -- groups and devices --------------------------------------------------------------

    async def save_group(
        self,
        name: str,
        *,
        parent_uuid: str | None = None,
        enabled: bool = True,
        uuid: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"profile": {"name": name}, "enabled": enabled}
        if parent_uuid is not None:
            body["parentUuid"] = parent_uuid
        if uuid is not None:
            body["uuid"] = uuid
        group: dict[str, Any] = await self._data("POST", "device/group/save", body=body)
        return group

    async def groups(self) -> list[dict[str, Any]]:
        return list(await self._data("GET", "device/group/all") or [])

    async def device_exists(self, serial: str) -> bool:
        return bool(await self._data("GET", "device/exists", params={"serialNo": serial}))

    async def save_devices(self, devices: Iterable[Mapping[str, Any]]) -> int:
        """Save devices (device_body entries) in requests of up to 1000; how many were sent."""
        batch: list[Mapping[str, Any]] = []
        sent = 0
        for device in devices:
            batch.append(device)
            if len(batch) == SAVE_BATCH:
                sent += await self._save_batch(batch)
                batch = []
        if batch:
            sent += await self._save_batch(batch)
        return sent

    async def _save_batch(self, batch: Sequence[Mapping[str, Any]]) -> int:
        await self.call("POST", API + "device/save", body=list(batch))
        self.saves.update(d["profile"]["hardware_info"]["serial_no"] for d in batch)
        return len(batch)

    async def device(self, serial: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._data(
            "GET", "device/findBy", params={"serialNo": serial}
        )
        return found

    async def devices(self, filter_: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every device record of the site (device/find, all pages), optionally filtered."""
        return await self._all_pages("device/find", filter_, sortBy="uuid")

    async def installed_apps(self, serial: str) -> list[dict[str, Any]]:
        """The inventory the server holds for a device (device/app/installed `apps`)."""
        data = await self._data("GET", "device/app/installed", params={"serialNo": serial})
        apps = data.get("apps") if isinstance(data, dict) else None
        return list(apps or [])

    async def events(self, filter_: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """The site's profile events (logs/find, all pages), optionally filtered."""
        return await self._all_pages("logs/find", filter_)

    async def ota_installs(self) -> list[dict[str, Any]]:
        """Every `ota` event with status `installed` of the site."""
        return await self.events({"kind": "ota", "status": "installed"})

    # -- apps, images, profiles ----------------------------------------------------------

    async def upload_app(
        self, content: bytes, filename: str, *, name: str | None = None, enable: bool = True
    ) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("file", content, filename=filename)
        if name is not None:
            form.add_field("name", name)
        form.add_field("enable", "true" if enable else "false")
        app: dict[str, Any] = await self._data("POST", "app/upload", form=form)
        return app

    async def upload_ota(
        self,
        content: bytes,
        filename: str,
        *,
        ota_info: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("file", content, filename=filename)
        if ota_info:
            form.add_field("otaInfo", json.dumps(dict(ota_info)))
        if name is not None:
            form.add_field("name", name)
        ota: dict[str, Any] = await self._data("POST", "ota/upload", form=form)
        return ota

    async def save_profile(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`{uuid, name, updated}` of the saved profile."""
        saved: dict[str, Any] = await self._data("POST", "profile/save", body=dict(body))
        return saved

    async def profile(self, uuid: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._data("GET", "profile/findBy", params={"uuid": uuid})
        return found

    async def edit_profile(self, uuid: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Send the whole profile as loaded, edited (a stale `updated` is AdminConflict)."""
        edited: dict[str, Any] = await self._data(
            "POST", "profile/edit", params={"uuid": uuid}, body=dict(body)
        )
        return edited

    async def profile_status(self, uuid: str) -> dict[str, Any]:
        """The counts of profile/status and every per-device row (all pages) as `devices`."""
        page = 0
        counts: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        while True:
            envelope = await self.call(
                "GET",
                API + "profile/status",
                params={"uuid": uuid, "page": str(page), "size": str(PAGE_SIZE)},
            )
            data = dict(envelope.get("data") or {})
            page_rows = data.pop("devices", []) or []
            counts = data
            rows.extend(page_rows)
            page += 1
            if page >= int(envelope.get("totalPage") or 0) or not page_rows:
                return {**counts, "devices": rows}
