"""Device platforms behind one typed interface: linux, android (adb or local shell), simulated."""
