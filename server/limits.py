"""Every limit the server enforces on what clients send, in one place (issue 12).

Each constant says what it bounds and why that value; the module that enforces it names it in its
own docstring. Limits set per deployment (body and upload sizes) live in server.config as
defaults of ServerConfig; the README's "Limits" section lists both. Add new limits here, each with
a one-line comment.
"""

from __future__ import annotations

# --- JSON values (server.domain.validation: parse_json, check_value) ---------------------------
INT_MIN = -(2**63)  # smallest integer accepted anywhere: SQLite integers are signed 64-bit
INT_MAX = 2**63 - 1  # largest integer accepted anywhere (2^63 raised OverflowError in sqlite3)
MAX_JSON_DEPTH = 32  # nesting of any body, stored document or filter: profiles need 4, so ample
MAX_JSON_VALUES = 100_000  # values (scalars + containers) in one free-form document (settings)
MAX_STRING = 1024  # characters of a named string field unless its parser says otherwise
MAX_FREE_STRING = 65_536  # characters of a string inside a free-form value (settings, network)
MAX_KEY = 256  # characters of an object key inside a free-form value

# --- Times (server.domain.profiles.normalize_time: profiles, events) ---------------------------
MIN_TIME_MS = 0  # 1970-01-01T00:00:00.000Z: no device or profile time is before the epoch
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: the last time ISO-8601 can write

# --- Device identity (server.domain.devices.parse_serial) --------------------------------------
MAX_SERIAL = 128  # characters of a serial number, in device/save, register and scope.device

# --- Device keys (server.domain.device_keys: agent/challenge, agent/register) ------------------
CHALLENGE_TTL_S = 60  # a challenge's life (§7): a device signs in milliseconds; 60 s covers a
# slow link and a loaded server, and is all a relayed challenge is good for. Challenges are
# stateless (a MAC under a server secret): issuing one keeps nothing, so no count to bound; a
# used one is kept this long (rows: the registers with a proof of the last 60 s)
MAX_PUBLIC_KEY_CHARS = 2048  # publicKey PEM: Ed25519 is 113 characters, P-256 178; room for
# CRLF line ends, and for an RSA key to be read and refused by name rather than by length
MAX_SIGNATURE_CHARS = 128  # base64 signature: 88 for Ed25519, at most 96 for DER ECDSA P-256
MAX_CHALLENGE_CHARS = 128  # a challenge as issued is 55 characters

# --- Batches and lists (server.domain.devices, device_reports, profiles, paging) -------------
MAX_DEVICE_BATCH = 1000  # devices in one device/save body (one transaction)
MAX_APPS = 5000  # apps in one inventory (PUT agent/apps); a phone has a few hundred
MAX_EVENTS = 1000  # events in one agent/events body (one transaction)
MAX_REFERENCES = 10_000  # entries of each profile list (apps, otas, scope.group, scope.device)
MAX_PAGE_SIZE = 500  # `size` of a list request (§1)
MAX_PAGE = 10_000_000  # `page` of a list request: page * size stays far inside 64 bits
MAX_FILTER_VALUES = 1000  # values of one `filter` key ("any of"; server.api): one SQL IN list
# stays far below SQLite's bound-variable limit (32,766)

# --- Logins (server.auth): a token is spent only on a password checked and found wrong ---------
LOGIN_ADDRESS_BURST = 20  # failed logins from one client address at once: typos behind a NAT
LOGIN_ADDRESS_PER_S = 0.5  # then one more every 2 s: a 50/s wrong-password flood costs 0.5 hash/s
LOGIN_EMAIL_BURST = 10  # failed logins on one email at once, known or not (the answer tells none)
LOGIN_EMAIL_PER_S = 1 / 20  # then one more every 20 s: at most 4,320 guesses a day on an account
LOGIN_TRACKED_KEYS = 10_000  # buckets kept per limiter (~1 MB); the least recently used goes
LOGIN_HASH_WORKERS = 1  # threads running login scrypt (~45 ms of a core each): a core stays free
LOGIN_HASH_QUEUE = 8  # logins hashing or waiting at once (~0.4 s); more: 503 + Retry-After

# --- Connections (server.listener) -------------------------------------------------------------
MAX_CONNECTIONS = 25_000  # open connections, push channels too (10,000 simulated devices hold ~2)
FD_RESERVE = 256  # descriptors kept below the open-files limit (the cap's other bound): db, files
HEADER_TIMEOUT_S = 15.0  # from opening, or a request's first byte after idling, to its whole head
BODY_IDLE_S = 60.0  # a request body with no byte this long is refused (nginx client_body_timeout)
KEEPALIVE_S = 75.0  # idle keep-alive connections closed after this (nginx's; clients pool 15-30 s)
MAX_REQUEST_LINE = 8190  # bytes of a request line (aiohttp's default); longer: 400 envelope
MAX_HEADER_FIELD = 8190  # bytes of one header line; longer: 400 envelope
MAX_HEADERS = 128  # header lines of one request; more: 400 envelope
LOG_EVERY_S = 10.0  # one line a kind (cap hit, accept failed, bad request) per this, counted
PUSH_REPLACED_CLOSE_S = 2.0  # a push channel its device replaced gets this long to answer the close

# --- Uploads: the form (server.handlers.uploads, server.domain.filenames) ----------------------
UPLOAD_FIELD_BYTES = 64 * 1024  # bytes of one text field of an upload form (name, enable, otaInfo)
UPLOAD_NAME = 256  # characters of an upload's `name` field: a label shown in lists
FILE_NAME = 255  # characters of a stored file name (the sanitised multipart filename): most
# file systems' limit, so a name kept for a download is one every client can save

# --- Uploads: the archives (server.services.upload_parsers -> midm_common.zipguard) ------------
ZIP_MAX_ENTRIES = 65_535  # entries of an uploaded zip: zip32's maximum; the APK reader's table
# costs ~1.5 KB an entry, so this caps it near 100 MB; real APKs have a few thousand
ZIP_MAX_RATIO = 100  # inflated / compressed bytes of an entry the parser reads (past the grace):
# deflate of real manifests and resource tables stays far under; a zero-filled bomb is ~1000
ZIP_RATIO_GRACE = 1 << 20  # inflated bytes of an entry before the ratio applies (tiny files
# compress wildly, and 1 MiB costs nothing)
ZIP_MANIFEST_BYTES = 4 << 20  # inflated AndroidManifest.xml: real ones are well under 1 MiB
ZIP_ARSC_BYTES = 32 << 20  # inflated resources.arsc: the largest real apps' are ~10-20 MiB
ZIP_ENTRY_BYTES = 8 << 20  # any other entry the APK parser reads (v1 signature .RSA/.SF files)
OTA_METADATA_BYTES = 1 << 20  # inflated META-INF/com/android/metadata: a few hundred bytes real

# --- Uploads: APK signatures (midm_common.apk_signature, apk_v1; shared with every reader) ----
# Named there, each with its reason, since midm_common imports no server module:
# MAX_SIGNING_BLOCK_BYTES (16 MiB), MAX_SIGNERS (10, Android's own), MAX_SIGNATURES (16),
# MAX_CERTIFICATES (16); v1: MAX_MANIFEST_BYTES (32 MiB, MANIFEST.MF and .SF),
# MAX_SIGNATURE_BLOCK_BYTES (1 MiB), MAX_V1_SIGNERS (10), MAX_INFLATED_BYTES (4 GiB digested in
# all, ~10 s within PARSE_TIMEOUT_S); the entry count is ZIP_MAX_ENTRIES above.

# --- Uploads: the parser worker (server.services.upload_parsers) ------------------------------
PARSE_TIMEOUT_S = 60.0  # one upload's parse in the worker (real APKs: under 5 s); over it the
# worker is killed and the upload is 40001, so a hostile file holds the queue this long at most
PARSER_START_TIMEOUT_S = 60.0  # a new worker's start (forkserver, imports) on a loaded machine
PARSER_WATCHDOG_S = 1.0  # how often the worker checks that the server process still exists

# --- Writes (server.store.db) ------------------------------------------------------------------
WRITE_GROUP = 256  # writes committed together at most (one fsync): a burst of inventories costs
# N/256 commits, and one group's transaction stays short (the readers are never held by it: WAL)

# --- Downloads (server.domain.ranges) ----------------------------------------------------------
RANGE_MAX_DIGITS = 18  # digits of a Range position read as a number; longer means "past any
# file" (10^18 bytes), never int() of 5,000 digits
