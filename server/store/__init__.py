"""The only place that speaks SQL: one module per kind of object, a Database that runs them."""
