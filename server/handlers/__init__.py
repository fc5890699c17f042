"""HTTP handlers: parse the request, call domain decisions and store transactions, render with
server.wire. No SQL and no sqlite3 here (tests/server/test_layers.py)."""
