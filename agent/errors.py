"""The agent package's exception tree; every error carries a hint the CLI prints.

AgentError
├── ConfigError            settings that cannot work (bad flag, missing server URL)
├── StateError             the state dir cannot be read or written
├── TransportError         the server could not be reached or did not answer in time
│   └── PushClosed         the WebSocket closed
│       └── PushRefused(status)   the handshake was refused (401: the token was revoked)
├── ProtocolError          the server answered something that is not the protocol
├── ApiError(code, status, message, uq)   the server answered an error envelope
│   ├── Unauthorized (40100)  ├── NotFound (40400)  ├── RateLimited (42900)
│   │   └── AdminLoginRefused   the admin login (--admin-email/--admin-password) was refused
│   └── Unavailable (50300)   (others stay ApiError with their code)
└── PlatformError          the device platform failed (adb, sysfs, ...)

The file-format readers raise `midm_common.errors.FormatError` (ApkError, OtaPackageError),
re-exported here; it is not an AgentError, since the server raises it too.
"""

from __future__ import annotations

from midm_common.errors import ApkError, FormatError, OtaPackageError

__all__ = ["ApkError", "FormatError", "OtaPackageError"]  # and every class below


class AgentError(Exception):
    """Base of every error raised by the agent package."""

    hint = "see the log for details"


class ConfigError(AgentError):
    hint = "check the command line, the MIDM_* environment and --config"


class StateError(AgentError):
    hint = "check that --state-dir exists and is writable by this user"


class TransportError(AgentError):
    hint = "check --server, the network and that the server is running"


class PushClosed(TransportError):
    """The push channel ended; `code` is the WebSocket close code when the server sent one
    (1001: the server is going away, its shutdown)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class PushRefused(PushClosed):
    """The server refused the WebSocket handshake with an HTTP status (401: a revoked token)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(AgentError):
    hint = "the server is not a MiDM backend, or a proxy answered in its place"


class ApiError(AgentError):
    hint = "the server refused the request; its message says why"

    def __init__(
        self,
        message: str,
        *,
        code: int,
        status: int,
        uq: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.uq = uq
        self.retry_after = retry_after


class Unauthorized(ApiError):
    hint = "check --api-key; a revoked device token is renewed by registering again"


class AdminLoginRefused(Unauthorized):
    hint = (
        "check --admin-email/--admin-password (MIDM_ADMIN_EMAIL/MIDM_ADMIN_PASSWORD); "
        "the admin must belong to the site of the API key"
    )


class NotFound(ApiError):
    pass


class RateLimited(ApiError):
    pass


class Unavailable(ApiError):
    pass


class PlatformError(AgentError):
    hint = "check the platform (--platform, adb connection, permissions)"


API_ERRORS: dict[int, type[ApiError]] = {
    40100: Unauthorized,
    40400: NotFound,
    42900: RateLimited,
    50300: Unavailable,
}
