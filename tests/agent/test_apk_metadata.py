"""midm_common.apk on the committed real APKs: every field equals aapt's and keytool's report."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ApkError
from midm_common.apk import read_apk_metadata
from tests.helpers import APKS, expected_apks

SIGNED = sorted(name for name, info in expected_apks().items() if info["certMd5"])


@pytest.mark.parametrize("name", SIGNED)
def test_fields_match_aapt_and_keytool(name: str) -> None:
    """package, versions, SDKs (strings, "" when absent), certMd5 and size match expected.json."""
    want = expected_apks()[name]
    meta = read_apk_metadata(APKS / name)
    assert meta.package_name == want["packageName"]
    assert meta.version_code == want["versionCode"] and meta.version_name == want["versionName"]
    assert (meta.min_sdk_version, meta.target_sdk_version, meta.max_sdk_version) == (
        want["minSdkVersion"],
        want["targetSdkVersion"],
        want["maxSdkVersion"],
    )
    assert meta.cert_md5 == want["certMd5"]
    assert meta.size == want["appSize"]
    assert meta.label == (want["label"] or want["packageName"])


def test_v1_only_signature_is_read() -> None:
    """A v1-only APK's certificate comes from its signer file (META-INF/*.RSA)."""
    assert (
        read_apk_metadata(APKS / "v1only.apk").cert_md5 == expected_apks()["v1only.apk"]["certMd5"]
    )


def test_other_key_gives_other_cert() -> None:
    """The same package signed with another key has another certMd5."""
    ours = read_apk_metadata(APKS / "basic-v2.apk").cert_md5
    theirs = read_apk_metadata(APKS / "basic-v2-othercert.apk").cert_md5
    assert ours != theirs


def test_missing_version_code_is_version_0() -> None:
    """A manifest without versionCode/versionName (aapt: versionCode='') is what Android
    installs as version 0: versionCode 0 and versionName "", not a bad manifest."""
    meta = read_apk_metadata(APKS / "noversion.apk")
    assert (meta.package_name, meta.version_code, meta.version_name) == (
        "com.example.noversion",
        0,
        "",
    )
    assert expected_apks()["noversion.apk"]["versionCode"] == 0


def test_unsigned_apk_has_empty_cert() -> None:
    """An unsigned APK parses with certMd5 ""; callers decide whether that is allowed."""
    assert read_apk_metadata(APKS / "unsigned.apk").cert_md5 == ""


@pytest.mark.parametrize(
    ("name", "reason"),
    [("corrupt-truncated.apk", "bad_zip"), ("not-a-zip.apk", "bad_zip")],
)
def test_bad_files_raise_with_reason(name: str, reason: str) -> None:
    """Corrupt and non-zip files raise ApkError naming the file and a reason word."""
    with pytest.raises(ApkError) as caught:
        read_apk_metadata(APKS / name)
    assert caught.value.reason == reason and name in str(caught.value)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    """An empty file and a missing file raise ApkError, not OSError or ValueError."""
    empty = tmp_path / "empty.apk"
    empty.write_bytes(b"")
    with pytest.raises(ApkError, match="empty"):
        read_apk_metadata(empty)
    with pytest.raises(ApkError, match="cannot read"):
        read_apk_metadata(tmp_path / "missing.apk")


def test_zip_without_manifest(tmp_path: Path) -> None:
    """A zip with no AndroidManifest.xml is ApkError(no_manifest)."""
    import zipfile

    path = tmp_path / "plain.apk"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ApkError) as caught:
        read_apk_metadata(path)
    assert caught.value.reason == "no_manifest"


def test_small_arsc_reader_agrees_with_androguard() -> None:
    """The label found by midm_common.arsc equals androguard's full resolution on every fixture."""
    from loguru import logger

    logger.disable("androguard")
    from androguard.core.apk import APK

    from midm_common.arsc import resolve_string

    checked = 0
    for name in SIGNED:
        apk = APK(str(APKS / name))
        raw = apk.get_attribute_value("application", "label")
        if raw and raw.startswith("@"):
            assert (
                resolve_string(apk.get_file("resources.arsc"), int(raw[1:], 16))
                == apk.get_app_name()
            )
            checked += 1
    assert checked >= 5


@given(st.binary(max_size=400), st.integers(0, 2**32 - 1))
def test_small_arsc_reader_never_raises(data: bytes, res_id: int) -> None:
    """Garbage tables give None (the caller falls back), never an exception."""
    from midm_common.arsc import resolve_string

    assert resolve_string(data, res_id) is None or isinstance(resolve_string(data, res_id), str)
