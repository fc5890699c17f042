"""The agent's I/O shell: durable state, the outbox, the agent loop and the push listener."""
