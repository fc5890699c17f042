"""Real artifacts for the simulator, generated in Python (no aapt, Java or Android tools).

- `build_apk(...)`: a signed APK (binary manifest, v1 JAR + v2 signatures) that the project's
  APK reader, the server's upload and `apksigner verify` accept.
- `build_ota(...)`: an OTA zip (full or partial, A/B or BLOCK) with its metadata file.
- `Signer`: signing identities; `Signer.derive(name)` is the same in every process,
  `default_signer()` is the one APKs get unless told otherwise.
Every function is pure (bytes out, no files, no clock): the same arguments give the same bytes.
Bad arguments raise ValueError naming the argument.
"""

from simulator.gen.apk import build_apk
from simulator.gen.ota import build_ota, ota_metadata
from simulator.gen.signer import Signer, default_signer, signers

__all__ = ["Signer", "build_apk", "build_ota", "default_signer", "ota_metadata", "signers"]
