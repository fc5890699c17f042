"""What the agent and the server both import, and nothing else: the file-format readers and the
logging set-up. It imports neither side (tests/test_imports.py holds the rules).

- `apk`: APK metadata (androguard, imported lazily) with `arsc`, a small resources.arsc reader;
- `apk_signature`: APK signatures verified (v3, v2 blocks; v1 JAR in `apk_v1`, its PKCS#7
  read by `der`), with `cryptography` only; the server's uploads call it through `apk`;
- `ota`: OTA package metadata (`META-INF/com/android/metadata`);
- `zipguard`: zip entries read within limits (entry count, inflated size, ratio): no bombs;
- `errors`: FormatError and its subclasses, raised by the readers;
- `logsetup`: structlog configured once, by each CLI;
- `cliargs`: the option types of the command lines (integers, ports), each error one line.
"""
