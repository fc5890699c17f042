"""The installed-app inventory: the APK tree scanner with its cache, and install times."""
