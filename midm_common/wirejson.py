"""JSON on the wire for the agent's requests and answers: orjson (Rust) where it can, the
standard library where orjson refuses a value.

Why: a simulated fleet decodes every check-in answer and encodes every check-in body; with the
standard library those were ~4 us each of the ~39 us a check-in cost the worker (py-spy,
bench/sim_rate.py), orjson does each in under 1 us.

Decisions [ours], so that nothing a device or a server sends changes meaning:
- `dumps` is compact JSON as UTF-8 bytes. orjson writes non-ASCII characters as UTF-8 where the
  standard library wrote \\u escapes: the same JSON text for any parser. What orjson refuses
  (a lone surrogate, an integer beyond 64 bits, a key that is not a string) is encoded by the
  standard library, as before, so no body that encoded yesterday fails today; dataclasses and
  datetimes, which the standard library refuses, are still refused (not encoded by orjson's
  own rules). NaN and infinities encode as null (the standard library wrote `NaN`, which no
  strict parser, ours included, reads back).
- `loads` is strict RFC 8259: NaN, Infinity, a number that overflows a double and bytes that are
  not UTF-8 are refused (`json.JSONDecodeError`, a ValueError) where the standard library let
  some through; an integer beyond 64 bits reads as a float (orjson), so a field that must be an
  integer refuses it. A server answering either is answering garbage.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

JSONDecodeError = json.JSONDecodeError  # orjson.JSONDecodeError is a subclass
_COMPACT = json.JSONEncoder(separators=(",", ":"))  # the fallback, made once
_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME


def dumps(value: Any) -> bytes:
    """Compact JSON, UTF-8; TypeError or ValueError for what JSON cannot hold."""
    try:
        return orjson.dumps(value, option=_OPTIONS)
    except TypeError:  # orjson.JSONEncodeError: the standard library may take it (see above)
        return _COMPACT.encode(value).encode()


def loads(data: bytes | str) -> Any:
    """A JSON document; JSONDecodeError (a ValueError) for anything else."""
    return orjson.loads(data)
