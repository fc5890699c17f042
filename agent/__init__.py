"""midm-fleet agent: the asyncio on-device agent for Linux and Android test rigs."""

__version__ = "0.1.0"
