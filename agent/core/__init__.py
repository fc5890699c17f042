"""Pure decisions of the agent: enrollment flow, check-in body, retry schedule. No I/O here."""
