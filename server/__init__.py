"""midm-fleet server: the reference MiDM backend (aiohttp + embedded SQLite)."""

__version__ = "0.1.0"
BUILD = f"midm-fleet-server {__version__}"
