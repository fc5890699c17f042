"""`midm-server`: serve the reference backend, or manage sites (`site add`, `site list`).

    midm-server [--db PATH] [--host H] [--port P] [--log-level L]
    midm-server site add NAME --db PATH [--admin-email E] [--json]
    midm-server site list --db PATH [--json]

Errors are printed as one line (`midm-server: error: ...`) with exit status 2 for bad settings
and 1 for run-time failures; never a traceback. SIGTERM and SIGINT shut down cleanly; they are
handled from the `server.listening` line on.

Serving binds the port before it touches the database: a taken port fails having written
nothing. Decision [ours]: `site add` and `site list` work on an existing database only; on a
missing --db they fail (exit 2, "no database at PATH") and create nothing. A database is made by
the server's first start (first site, credentials file), so a mistyped path can never become a
second database whose sites the running server does not know.

Connections (server.listener): at most --max-connections open (default MAX_CONNECTIONS, kept
below the open-files limit, which the server raises toward its hard value at start).
--trusted-proxy (repeatable; an address or network) names the reverse proxies whose
`X-Forwarded-For` says who the client is for the login limits; without it the TCP peer is the
client (behind a proxy all clients then share the proxy's login limits).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import structlog

from midm_common import cliargs
from midm_common.logsetup import LEVELS, configure_logging
from server import BUILD
from server.app import create_app
from server.bootstrap import NewSite, create_site, ensure_first_site, write_credentials
from server.clock import SystemClock
from server.config import (
    DEFAULT_CHECKIN_INTERVAL_S,
    DEFAULT_HOST,
    DEFAULT_MAX_JSON_BYTES,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_PORT,
    DEFAULT_TOKEN_TTL_S,
    SeedSite,
    ServerConfig,
    default_db_path,
)
from server.domain.ratelimit import Network, parse_networks
from server.errors import ConfigError, ServerError
from server.limits import MAX_CONNECTIONS
from server.listener import ConnectionLimits, Listener, bind, open_files_cap, url_of
from server.store import sites
from server.store.db import Database

log = structlog.get_logger("server")


def build_parser() -> argparse.ArgumentParser:
    parser = cliargs.OneLineParser(
        prog="midm-server",
        description="Reference MiDM backend (aiohttp + embedded SQLite).",
    )
    parser.add_argument("--version", action="version", version=BUILD)
    parser.add_argument(
        "--db", type=Path, default=None, help=f"SQLite database file (default: {default_db_path()})"
    )
    parser.add_argument(
        "--files-dir",
        type=Path,
        default=None,
        help="where uploaded files are kept (default: <db>.files next to the database)",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=cliargs.port,
        default=DEFAULT_PORT,
        help=f"port to listen on, 0 for any free one (default {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--max-json-bytes",
        type=cliargs.positive_int,
        default=DEFAULT_MAX_JSON_BYTES,
        help="largest JSON request body accepted (413 above)",
    )
    parser.add_argument(
        "--max-upload-bytes",
        type=cliargs.positive_int,
        default=DEFAULT_MAX_UPLOAD_BYTES,
        help="largest APK/OTA upload accepted (413 above, checked while streaming)",
    )
    parser.add_argument(
        "--token-ttl",
        type=cliargs.positive_int,
        default=DEFAULT_TOKEN_TTL_S,
        help="lifetime of admin access tokens in seconds",
    )
    parser.add_argument(
        "--checkin-interval",
        type=cliargs.positive_int,
        default=DEFAULT_CHECKIN_INTERVAL_S,
        help="seconds between check-ins that the server asks of awake devices",
    )
    parser.add_argument(
        "--max-connections",
        type=cliargs.positive_int,
        default=MAX_CONNECTIONS,
        help="open connections at most, push channels included; more are closed at once "
        f"(default {MAX_CONNECTIONS}, and below the open-files limit)",
    )
    parser.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a reverse proxy (address or network, repeatable) whose X-Forwarded-For names the "
        "client for login limits; without it the TCP peer is the client",
    )
    parser.add_argument("--log-level", choices=LEVELS, default="info")
    commands = parser.add_subparsers(
        dest="command", metavar="{site}", parser_class=cliargs.OneLineParser
    )
    site = commands.add_parser("site", help="add or list sites of a database")
    site_commands = site.add_subparsers(dest="site_command", required=True, metavar="{add,list}")
    add = site_commands.add_parser("add", help="add a site with an admin account and an API key")
    add.add_argument("name", help="the site's short name (its siteId)")
    add.add_argument(
        "--db",
        type=Path,
        dest="site_db",
        required=True,
        help="an existing database (the server creates one on its first start)",
    )
    add.add_argument("--admin-email", default=None)
    add.add_argument("--json", action="store_true", help="print the new credentials as JSON")
    listing = site_commands.add_parser("list", help="list the sites (no secrets)")
    listing.add_argument(
        "--db", type=Path, dest="site_db", required=True, help="an existing database"
    )
    listing.add_argument("--json", action="store_true")
    return parser


def _open_db(path: Path) -> Database:
    db = Database(path)
    try:
        db.migrate()
    except BaseException:
        db.close()
        raise
    return db


def _print_site(created: NewSite, as_json: bool) -> None:
    values = {k: v for k, v in asdict(created).items() if v is not None}
    if as_json:
        sys.stdout.write(json.dumps(values, indent=2) + "\n")
        return
    for key, value in values.items():
        sys.stdout.write(f"{key}: {value}\n")
    sys.stdout.write("Keep the API key and password: they are not shown again.\n")


def site_command(args: argparse.Namespace) -> int:
    path: Path = args.site_db
    if path.is_dir():
        raise ConfigError(f"--db: {path} is a folder; give the database file's path")
    if not path.exists():
        raise ConfigError(
            f"no database at {path}; check --db (the server creates a database on its first start)"
        )
    db = _open_db(path)
    try:
        if args.site_command == "add":
            name = args.name.strip()
            if not name:
                raise ConfigError("site name must not be empty")
            created = create_site(
                db, SeedSite(name=name, admin_email=args.admin_email), SystemClock()
            )
            _print_site(created, args.json)
            return 0
        rows = db.read_sync(sites.list_sites)
        if args.json:
            sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        else:
            for row in rows:
                sys.stdout.write(
                    f"{row['siteUuid']}  {row['name']}  admins: {', '.join(row['admins'])}\n"
                )
        return 0
    finally:
        db.close()


def prepare_database(config: ServerConfig) -> None:
    """Migrate, create the first site on a new database, and say where its secrets are (or
    that MIDM_* seed variables are ignored because the database has its sites already)."""
    db = _open_db(config.db_path)
    try:
        created = ensure_first_site(db, config.seed, SystemClock())
    finally:
        db.close()
    if created is None:
        if config.seed.variables:
            log.warning(
                "server.seed_ignored",
                variables=list(config.seed.variables),
                db=str(config.db_path),
                hint="these only seed a new database's first site: use a new --db, or the "
                "credentials of this database's sites",
            )
        return
    credentials = config.db_path.with_name(config.db_path.name + ".credentials.json")
    if created.apiKey is not None or created.adminPassword is not None:
        write_credentials(credentials, created)
        log.warning(
            "server.first_site",
            site=created.site,
            siteUuid=created.siteUuid,
            admin=created.adminEmail,
            credentials=str(credentials),
            hint="generated API key and password are in the credentials file (mode 0600)",
        )
    else:
        log.info(
            "server.first_site",
            site=created.site,
            siteUuid=created.siteUuid,
            admin=created.adminEmail,
            hint="API key and password are those of the environment",
        )


async def serve(config: ServerConfig, sockets: list[socket.socket]) -> None:
    """Serve on the bound `sockets` until SIGTERM or SIGINT. The handlers are installed before
    anything else, so that `server.listening` means "a signal now stops the server cleanly"."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = create_app(config)
    limits = ConnectionLimits.of(config, open_files_cap(config.max_connections))
    listener = await Listener.start(app, sockets, limits)
    try:
        log.info(
            "server.listening",
            url=url_of(config.host, sockets),
            db=str(config.db_path),
            build=BUILD,
            max_connections=limits.max_connections,
        )
        await stop.wait()
        log.info("server.stopping")
    finally:
        await listener.stop()
    log.info("server.stopped")


def _proxies(texts: list[str]) -> tuple[Network, ...]:
    try:
        return parse_networks(texts)
    except ValueError as exc:
        raise ConfigError(f"--trusted-proxy: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    try:
        if args.command == "site":
            return site_command(args)
        db_path = (args.db or default_db_path()).expanduser()
        if db_path.is_dir():
            raise ConfigError(f"--db: {db_path} is a folder; give the database file's path")
        proxies = _proxies(args.trusted_proxy)
        sockets = bind(args.host, args.port)  # first: a taken port must leave no files behind
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            config = ServerConfig.for_db(
                db_path,
                files_dir=args.files_dir,
                host=args.host,
                port=args.port,
                max_json_bytes=args.max_json_bytes,
                max_upload_bytes=args.max_upload_bytes,
                token_ttl_s=args.token_ttl,
                checkin_interval_s=args.checkin_interval,
                max_connections=args.max_connections,
                trusted_proxies=proxies,
                seed=SeedSite.from_env(),
            )
            prepare_database(config)
            asyncio.run(serve(config, sockets))
        finally:
            for sock in sockets:
                sock.close()
        return 0
    except ConfigError as exc:
        sys.stderr.write(f"midm-server: error: {exc}\n")
        return 2
    except ServerError as exc:
        sys.stderr.write(f"midm-server: error: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"midm-server: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
