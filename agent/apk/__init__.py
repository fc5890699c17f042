"""APK metadata: one parser for the agent's inventory and the server's uploads."""
