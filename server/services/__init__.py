"""Long-lived services the app builds once and shares between requests (`server.app` wires them).

- `hub`: the open push channels (WebSockets), indexed by device, serial and group;
- `sync_recipients`: who gets a `sync` when an admin changes a profile or moves a group;
- `wakes`: wakeToApply, waking sleeping devices at a profile's start time;
- `scopes`: per-site cache of which profiles cover which devices;
- `checkins`: check-ins kept in memory and written to SQLite in batches;
- `upload_parsers`: the worker pool that parses uploaded APKs and OTA packages.
Decisions they act on live in `server.domain`; their SQL in `server.store`.
"""
