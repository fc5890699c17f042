"""The server's exception tree; one middleware renders any ApiError as the envelope (§1).

ServerError
├── ApiError(code, status, message)      rendered as the error envelope
│   ├── BadJson            40000 / 400   body is not JSON, or the wrong JSON type
│   ├── MalformedRequest   40000 / 400   not valid HTTP (request line, headers, framing)
│   ├── InvalidField       40001 / 400   a field is missing, of the wrong type or out of range
│   ├── Unauthorized       40100 / 401
│   ├── Forbidden          40300 / 403   another site
│   ├── NotFound           40400 / 404   no such object in the caller's site (or no such path)
│   ├── MethodNotAllowed   40500 / 405   known path, other method [ours: HTTP status x 100]
│   ├── Conflict           40900 / 409
│   ├── TooLarge           41300 / 413
│   ├── NotForDevice       42200 / 422
│   ├── RateLimited        42900 / 429   (Retry-After)
│   ├── Internal           50000 / 500
│   │   └── StoreFailed    50000 / 500   SQLite failed (cause in the log under the uq, not sent)
│   └── Unavailable        50300 / 503   (Retry-After)
│       └── StoreBusy      50300 / 503   the database stayed locked past its busy timeout
└── ConfigError            bad command line or settings; the CLI prints it and exits 2

SQLite's exceptions never leave server/store: `server.store.db` translates them into these.
"""

from __future__ import annotations


class ServerError(Exception):
    """Base of every error raised by the server package."""


class ConfigError(ServerError):
    """Settings that cannot work; str() is the sentence the CLI prints."""


class ApiError(ServerError):
    code = 50000
    status = 500

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadJson(ApiError):
    code, status = 40000, 400


class MalformedRequest(ApiError):
    """aiohttp could not parse the request; the message names what, never echoes the input."""

    code, status = 40000, 400


class InvalidField(ApiError):
    code, status = 40001, 400


class Unauthorized(ApiError):
    code, status = 40100, 401


class Forbidden(ApiError):
    code, status = 40300, 403


class NotFound(ApiError):
    code, status = 40400, 404


class MethodNotAllowed(ApiError):
    code, status = 40500, 405


class Conflict(ApiError):
    code, status = 40900, 409


class TooLarge(ApiError):
    code, status = 41300, 413


class NotForDevice(ApiError):
    code, status = 42200, 422


class RateLimited(ApiError):
    code, status = 42900, 429


class Internal(ApiError):
    code, status = 50000, 500


class Unavailable(ApiError):
    code, status = 50300, 503


class StoreFailed(Internal):
    """The database failed. The response says only that; str() and the log carry the cause."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "internal error (database); the server log has the details under this response's uq"
        )
        self.detail = detail

    def __str__(self) -> str:
        return f"the database failed: {self.detail}"


class StoreBusy(Unavailable):
    """Another writer (say a `midm-server site add`) held the database past the busy timeout."""

    def __init__(self, detail: str) -> None:
        super().__init__("the database is busy; retry shortly", retry_after=1)
        self.detail = detail
