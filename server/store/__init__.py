"""The only place that speaks SQL: one module per kind of object, a Database that runs them.

Callers use the functions declared `@writes`/`@reads` (each one whole transaction, awaited with
the Database); the plain `conn` functions are their building blocks (and the CLI's, run with
`write_sync`/`read_sync`). SQLite's errors are translated into ServerErrors in `db`.
"""
