"""Pure decisions of the server: validation, paging, group trees, profile rules. No I/O here."""
