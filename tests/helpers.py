"""Shared test helpers: a real server on 127.0.0.1:0 with a temp SQLite file, and an API client."""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from server.app import create_app
from server.bootstrap import NewSite, create_site
from server.clock import Clock, FixedClock
from server.config import SeedSite, ServerConfig
from server.listener import ConnectionLimits, Listener, bind, url_of
from server.store.db import Database

FIXTURES = Path(__file__).parent / "fixtures"
APKS = FIXTURES / "apks"
ENVELOPE_KEYS = {"uq", "doc_version", "result", "code", "message", "build"}


def expected_apks() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads((APKS / "expected.json").read_text())
    return data


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: CIMultiDict[str]

    @property
    def data(self) -> Any:
        return self.body.get("data")

    @property
    def code(self) -> int:
        return int(self.body["code"])


@dataclass
class Client:
    """Calls the server as one site's admin (or with whatever credentials a test sets)."""

    http: aiohttp.ClientSession
    base: str
    key: str | None
    token: str | None = None
    scheme: str = "Bearer"

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.key is not None:
            headers["X-API-Key"] = self.key
        if self.token is not None:
            headers["Authorization"] = f"{self.scheme} {self.token}"
        headers.update(extra or {})
        return headers

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        body: Any = data
        if raw is not None:
            body = io.BytesIO(raw)
        elif json_body is not None:
            body = io.BytesIO(json.dumps(json_body).encode())
        async with self.http.request(
            method, self.base + path, data=body, params=params, headers=self.headers(headers)
        ) as response:
            text = await response.read()
            assert response.content_type == "application/json", (response.status, text[:200])
            parsed = json.loads(text)
            assert set(parsed) >= ENVELOPE_KEYS, parsed
            return Reply(response.status, parsed, response.headers.copy())

    async def get(self, path: str, **params: str) -> Reply:
        return await self.call("GET", path, params=params or None)

    async def post(self, path: str, body: Any, **params: str) -> Reply:
        return await self.call("POST", path, json_body=body, params=params or None)

    async def upload(
        self, path: str, content: bytes, filename: str = "file.bin", /, **fields: str
    ) -> Reply:
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(content), filename=filename)
        for key, value in fields.items():
            form.add_field(key, value)
        return await self.call("POST", path, data=form)

    async def upload_apk(self, fixture: str, /, **fields: str) -> Reply:
        content = (APKS / fixture).read_bytes()
        return await self.upload("/ota/api/app/upload", content, fixture, **fields)

    async def login(self, email: str, password: str) -> None:
        reply = await self.post(
            "/portal/V1/auth", {"email": email, "password": password, "type": "email"}
        )
        assert reply.status == 200, reply.body
        self.token = reply.data["access_token"]


@dataclass
class Site:
    uuid: str
    name: str
    key: str
    email: str
    password: str


@dataclass
class Server:
    """The app served as `midm-server` serves it: through server.listener (connection guard,
    aiohttp's own 400s as the envelope), on the test's event loop."""

    config: ServerConfig
    clock: Clock
    base: str = ""
    runner: web.AppRunner | None = None
    customize: Callable[[web.Application], None] | None = None
    sites: dict[str, Site] = field(default_factory=dict)
    parser_pool: Executor | None = None  # shared by the test session; None: the app's own
    app: web.Application | None = None
    limits: ConnectionLimits | None = None  # None: the config's, as midm-server's
    listener: Listener | None = None

    async def start(self) -> None:
        app = self.app = create_app(self.config, clock=self.clock, parser_pool=self.parser_pool)
        if self.customize is not None:
            self.customize(app)
        sockets = bind("127.0.0.1", self.config.port)
        limits = self.limits or ConnectionLimits.of(self.config)
        self.listener = await Listener.start(app, sockets, limits)
        self.runner = self.listener.runner
        self.base = url_of("127.0.0.1", sockets)

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop()
            self.listener = self.runner = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def sql(self, statement: str, *params: Any) -> list[sqlite3.Row]:
        """Direct SQL on the server's database, for arranging state the admin API cannot."""
        conn = sqlite3.connect(self.config.db_path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            return conn.execute(statement, params).fetchall()
        finally:
            conn.close()

    def files_on_disk(self) -> list[Path]:
        return sorted(p for p in self.config.files_dir.rglob("*") if p.is_file())


TEST_PASSWORD_COST = 2**4  # scrypt n for test admins: the hash stores it, so logins are cheap too


def seed_sites(config: ServerConfig, clock: Clock, names: list[str]) -> dict[str, Site]:
    db = Database(config.db_path)
    try:
        db.migrate()
        sites = {}
        for name in names:
            seed = SeedSite(
                name=name,
                api_key=f"key-{name}",
                admin_email=f"admin@{name}.test",
                admin_password=f"pw-{name}",
            )
            created: NewSite = create_site(db, seed, clock, password_cost=TEST_PASSWORD_COST)
            sites[name] = Site(
                created.siteUuid,
                name,
                f"key-{name}",
                seed.admin_email or "",
                seed.admin_password or "",
            )
        return sites
    finally:
        db.close()


def ota_zip(
    metadata: dict[str, str] | None, payload: bytes = b"payload", extra: bytes = b""
) -> bytes:
    """A small OTA-shaped zip: META-INF/com/android/metadata (if given) and a payload."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if metadata is not None:
            text = "".join(f"{k}={v}\n" for k, v in metadata.items())
            archive.writestr("META-INF/com/android/metadata", text)
        archive.writestr("payload.bin", payload + extra)
    return buffer.getvalue()


NOW_MS = 1_790_000_000_000  # 2026-09-21T...Z: a fixed clock for tests


def fixed_clock() -> FixedClock:
    return FixedClock(NOW_MS)
