"""midm-fleet simulator: runs thousands of real agents on simulated platforms against a backend."""

__version__ = "0.1.0"
