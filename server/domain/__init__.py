"""Pure decisions of the server: validation, paging, group trees, profile rules, scopes and
coverage, presence, inventories and the image feed. No I/O here (tests/test_imports.py)."""
