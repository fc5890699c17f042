"""`midm-agent`: run the on-device agent, or look at it (status, facts, inventory, snapshot).

    midm-agent run --server URL --api-key KEY --state-dir DIR --platform linux|android|simulated
                   [--config agent.toml] [--once] [--admin-email E --admin-password P]
                   [--ota-certs PATH|device] ...
    midm-agent status | facts | inventory [--json] | snapshot   (the same settings)

Settings: defaults < --config < MIDM_* environment < flags. Errors print one line
(`midm-agent: error: ... (hint)`) and exit 2 for bad settings (a --state-dir that cannot be
written is one), 1 for run-time failures; never a traceback. No command prints the help to
stderr and exits 2. `run` without --once runs until SIGTERM/SIGINT, then flushes and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import structlog

from agent import __version__, protocol
from agent.clock import SystemClock
from agent.config import PLATFORMS, AgentConfig, load
from agent.errors import AgentError, ConfigError, FormatError
from agent.platforms.base import BuildInfo, HardwareInfo, Platform, gather_facts
from agent.platforms.facts_file import load_facts, override_build, override_hardware
from agent.runtime.agent import Agent
from agent.runtime.device_key import FileKeyStore
from agent.runtime.files import write_atomic
from agent.runtime.outbox import FileOutbox, queued_events
from agent.runtime.state import FileStateStore
from agent.transport.client import AiohttpTransport, TlsOptions
from midm_common.cliargs import OneLineParser

log = structlog.get_logger("agent")
COMMANDS = ("run", "status", "facts", "inventory", "snapshot")


def _settings(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", type=Path, help="TOML file with any of the settings below")
    add("--server", help="server URL, e.g. http://127.0.0.1:8080 (MIDM_SERVER)")
    add("--api-key", dest="api_key", help="the site's API key (MIDM_API_KEY)")
    add(
        "--state-dir",
        dest="state_dir",
        help="where the token, state and outbox live (MIDM_STATE_DIR)",
    )
    add("--platform", choices=PLATFORMS, help="device platform (MIDM_PLATFORM; default linux)")
    add(
        "--admin-email",
        dest="admin_email",
        help="admin login used to save a new device (MIDM_ADMIN_EMAIL)",
    )
    add("--admin-password", dest="admin_password", help="(MIDM_ADMIN_PASSWORD)")
    add(
        "--checkin-interval",
        dest="checkin_interval_s",
        type=float,
        help="seconds between check-ins until the server says (default 60)",
    )
    add("--timeout", dest="request_timeout_s", type=float, help="per-request timeout, seconds")
    add("--no-push", dest="push", action="store_const", const=False, help="no WebSocket")
    add(
        "--insecure",
        dest="tls_verify",
        action="store_const",
        const=False,
        help="do not verify the server's TLS certificate",
    )
    add("--ca-bundle", dest="ca_bundle", help="extra CA certificates (PEM)")
    add("--client-cert", dest="client_cert", help="client certificate (PEM)")
    add("--client-key", dest="client_key", help="client certificate's key (PEM)")
    add("--apk-dir", dest="apk_dir", help="linux: the folder of APKs that is the installed set")
    add("--facts", help="JSON {hardware_info, build} overriding what the platform reads")
    add("--ac-online", dest="ac_online", choices=("auto", "yes", "no"), help="linux: AC power")
    add("--adb", help="android: the adb executable, or 'local' to run on the device")
    add("--adb-device", dest="adb_device", help="android: adb -s SERIAL")
    add(
        "--ota-certs",
        dest="ota_certs",
        metavar="PATH|device",
        help="install only OTA images signed by one of these certificates: a PEM file or a "
        "folder of them; 'device' on android: the device's own otacerts (MIDM_OTA_CERTS; "
        "default: images are not checked)",
    )
    add("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="midm-agent", description="MiDM on-device agent.")
    parser.add_argument("--version", action="version", version=f"midm-agent {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="{" + ",".join(COMMANDS) + "}", parser_class=OneLineParser
    )
    run = commands.add_parser("run", help="enroll, then check in until stopped")
    _settings(run)
    run.add_argument(
        "--once",
        action="store_true",
        help="enroll if needed, check in, report, flush, exit (0 = all accepted)",
    )
    for name, text in (
        ("status", "enrollment, last check-in, queued events, profiles"),
        ("facts", "what the platform reports, as JSON"),
        ("inventory", "the installed apps"),
        ("snapshot", "facts and inventory as one JSON device template"),
    ):
        sub = commands.add_parser(name, help=text)
        _settings(sub)
        if name == "inventory":
            sub.add_argument("--json", action="store_true")
        if name == "snapshot":
            sub.add_argument(
                "--output",
                "-o",
                type=Path,
                help="write the snapshot to this file (default: standard output)",
            )
    return parser


FLAG_NAMES = (
    "server",
    "api_key",
    "state_dir",
    "platform",
    "admin_email",
    "admin_password",
    "checkin_interval_s",
    "request_timeout_s",
    "push",
    "tls_verify",
    "ca_bundle",
    "client_cert",
    "client_key",
    "apk_dir",
    "facts",
    "ac_online",
    "adb",
    "adb_device",
    "ota_certs",
)


def make_platform(config: AgentConfig) -> Platform:
    facts = load_facts(config.facts) if config.facts else {}
    if config.platform == "linux":
        from agent.apk.inventory import folder_problem
        from agent.platforms.linux import LinuxPlatform

        # A typo must not become an empty inventory that the server stores.
        if config.apk_dir is not None and (problem := folder_problem(config.apk_dir)):
            raise ConfigError(f"--apk-dir {config.apk_dir}: no such folder ({problem})")
        return LinuxPlatform(
            state_dir=config.state_dir,
            apk_dir=config.apk_dir,
            facts=facts,
            ac_online=config.ac_online,
        )
    if config.platform == "android":
        from agent.platforms.android_adb import AndroidPlatform

        return AndroidPlatform(
            adb=None if config.adb == "local" else config.adb,
            device=config.adb_device,
            facts=facts,
            state_dir=config.state_dir,
        )
    from agent.platforms.simulated import SimulatedPlatform

    # --facts gives the starting identity and build; an applied image replaces the build
    hardware = override_hardware(HardwareInfo(serial_no=""), facts)
    return SimulatedPlatform(
        replace(hardware, serial_no=hardware.serial_no or "SIMULATED-0001"),
        override_build(BuildInfo(), facts),
    )


def check_state_dir(folder: Path) -> None:
    """A state dir that cannot hold the agent's files is a bad setting, found before anything
    is sent (the agent must not register and then fail to keep its token)."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--state-dir {folder}: not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(f"--state-dir {folder}: cannot write there ({exc.strerror})") from exc


def _print(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


async def _run(args: argparse.Namespace, config: AgentConfig) -> int:
    platform = make_platform(config)
    tls = TlsOptions(
        verify=config.tls_verify,
        ca_bundle=config.ca_bundle,
        client_cert=config.client_cert,
        client_key=config.client_key,
    )
    async with AiohttpTransport(
        config.server, timeout_s=config.request_timeout_s, tls=tls
    ) as transport:
        agent = Agent(
            config=config,
            platform=platform,
            transport=transport,
            clock=SystemClock(),
            state_store=FileStateStore(config.state_dir),
            outbox=FileOutbox(config.state_dir / "outbox"),
        )
        if args.once:
            await agent.run_once()
            log.info("agent.once_done", queued=agent.outbox.count())
            return 0
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await agent.run(stop)
        return 0


async def _look(command: str, args: argparse.Namespace, config: AgentConfig) -> int:
    if command == "status":
        state = FileStateStore(config.state_dir).load()
        queued = queued_events(config.state_dir / "outbox")
        values = asdict(state)
        values.pop("token")
        key = FileKeyStore(config.state_dir).load()
        values.update(
            enrolled=state.enrolled,
            queued_events=queued,
            key_fingerprint=None if key is None else key.fingerprint(),
        )
        _print(values)
        return 0
    platform = make_platform(config)
    if command == "facts":
        _print(protocol.facts_to_wire(await gather_facts(platform)))
        return 0
    apps = [protocol.app_to_wire(a) for a in await platform.installed_apps()]
    if command == "inventory":
        if args.json:
            _print(apps)
        else:
            for app in apps:
                sys.stdout.write(f"{app['packageName']}\t{app['versionCode']}\t{app['label']}\n")
        return 0
    facts = protocol.facts_to_wire(await gather_facts(platform))
    snapshot = {"snapshot_version": 1, **facts, "apps": apps}
    if args.output is None:
        _print(snapshot)
        return 0
    try:
        write_atomic(args.output, json.dumps(snapshot, indent=2).encode(), mode=0o644)
    except OSError as exc:
        raise ConfigError(f"--output {args.output}: cannot write ({exc.strerror})") from exc
    log.info("snapshot.written", path=str(args.output), apps=len(apps))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)  # a usage error, as argparse's own
        return 2
    from midm_common.logsetup import configure_logging  # one logging set-up for every CLI

    configure_logging(args.log_level)
    flags = {name: getattr(args, name, None) for name in FLAG_NAMES}
    try:
        config = load(flags, args.config)
        if args.command == "run":
            config.check()
            check_state_dir(config.state_dir)
            return asyncio.run(_run(args, config))
        return asyncio.run(_look(args.command, args, config))
    except ConfigError as exc:
        sys.stderr.write(f"midm-agent: error: {exc}\n")
        return 2
    except (AgentError, FormatError) as exc:
        sys.stderr.write(f"midm-agent: error: {exc} ({exc.hint})\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
