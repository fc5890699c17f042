"""Errors of the file-format readers; each carries a hint a CLI prints and a short `reason`
(e.g. "bad_zip", "no_manifest", "bad_manifest", "over_limit": a zip limit of
midm_common.zipguard, the message naming the entry and the limit).

FormatError            a file is not what it claims
├── ApkError           not a readable, signed APK
└── OtaPackageError    not a readable OTA zip with META-INF/com/android/metadata
"""

from __future__ import annotations


class FormatError(Exception):
    """A file is malformed; `reason` is a short machine-readable word, str() the sentence."""

    hint = "see the log for details"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ApkError(FormatError):
    hint = "check that the file is a complete, signed APK"


class OtaPackageError(FormatError):
    hint = "check that the file is a complete OTA zip built by the Android release tools"
