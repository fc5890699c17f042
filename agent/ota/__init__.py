"""OTA package metadata: one parser for the agent's checks and the server's uploads."""
