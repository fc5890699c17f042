"""The agent package's exception tree; every error carries a hint the CLI prints.

AgentError
└── FormatError            a file the agent or server was handed is not what it claims
    ├── ApkError           not a readable, signed APK
    └── OtaPackageError    not a readable OTA zip with META-INF/com/android/metadata
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error raised by the agent package."""

    hint = "see the log for details"


class FormatError(AgentError):
    """A file is malformed; `reason` is a short machine-readable word, str() the sentence."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ApkError(FormatError):
    hint = "check that the file is a complete, signed APK"


class OtaPackageError(FormatError):
    hint = "check that the file is a complete OTA zip built by the Android release tools"
