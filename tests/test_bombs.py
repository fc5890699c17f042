"""midm_common's readers under hostile zips: every bomb is refused within its limit, naming the
entry and the limit, before or while inflating, whatever the headers declare (issue 12, item 2)."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from midm_common import zipguard
from midm_common.apk import read_apk_metadata
from midm_common.errors import ApkError, FormatError, OtaPackageError
from midm_common.ota import read_ota_metadata
from midm_common.zipguard import ZipLimits
from tests.helpers import APKS, expected_apks
from tests.zipbombs import (
    MANIFEST,
    OTA_METADATA,
    OTA_TEXT,
    RawEntry,
    apk_with_version_code,
    declared_bomb,
    lying_bomb,
    many_entries,
    raw_zip,
    with_entry,
    zeros_deflated,
)

SMALL = ZipLimits(
    max_entries=50,
    max_ratio=100,
    ratio_grace=256 * 1024,
    max_entry_bytes=512 * 1024,
    max_manifest_bytes=512 * 1024,
    max_arsc_bytes=512 * 1024,
    max_ota_metadata_bytes=64 * 1024,
)
Reader = Callable[[Path, ZipLimits], object]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def no_inflating(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any inflate fail the test: the refusal must come from the headers alone."""

    def refuse(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("inflated an entry whose headers were over the limit")

    monkeypatch.setattr(zipguard, "inflate", refuse)


def test_apk_manifest_declaring_too_much_is_refused_before_inflating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's bomb (zip64, declared honestly): refused from its headers, naming the entry."""
    path = write(tmp_path, "b.apk", declared_bomb(MANIFEST, 2 << 20))
    no_inflating(monkeypatch)
    with pytest.raises(ApkError) as caught:
        read_apk_metadata(path, SMALL)
    assert caught.value.reason == "over_limit"
    message = str(caught.value)
    assert "b.apk" in message and MANIFEST in message and str(512 * 1024) in message


def test_apk_manifest_lying_about_its_size_stops_at_the_limit(tmp_path: Path) -> None:
    """Headers saying 100 bytes do not matter: inflating stops once past the entry's limit
    (here the ratio limit first, past its grace)."""
    path = write(tmp_path, "liar.apk", lying_bomb(MANIFEST, 64 << 20))
    with pytest.raises(ApkError) as caught:
        read_apk_metadata(path, SMALL)
    assert caught.value.reason == "over_limit" and MANIFEST in str(caught.value)
    assert "100:1" in str(caught.value)


def test_the_size_limit_holds_without_the_ratio(tmp_path: Path) -> None:
    """With the ratio out of the way, the running size alone stops a lying entry."""
    path = write(tmp_path, "liar.apk", lying_bomb(MANIFEST, 64 << 20))
    limits = ZipLimits(max_ratio=10**9, max_manifest_bytes=512 * 1024)
    with pytest.raises(ApkError, match=rf"{MANIFEST} inflates past the limit of 524288 bytes"):
        read_apk_metadata(path, limits)


def test_declared_ratio_is_refused_before_inflating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry declaring 400 KiB from 1 KiB (400:1, past the grace) is refused unread."""
    data = zeros_deflated(400 * 1024)
    archive = raw_zip([RawEntry(MANIFEST, data, declared=400 * 1024)])
    path = write(tmp_path, "ratio.apk", archive)
    no_inflating(monkeypatch)
    with pytest.raises(ApkError, match=r"declares a compression ratio over the limit of 100:1"):
        read_apk_metadata(path, SMALL)


def test_resources_arsc_bomb_is_refused_not_a_silent_label_fallback(tmp_path: Path) -> None:
    """A valid, v1-signed APK whose resources.arsc is a bomb: refused naming resources.arsc
    (the label lookup that reads it must not swallow the refusal)."""
    bomb = bytes(2 << 20)
    path = write(tmp_path, "arsc.apk", with_entry("basic-v1.apk", "resources.arsc", bomb))
    with pytest.raises(ApkError) as caught:
        read_apk_metadata(path, SMALL)
    assert caught.value.reason == "over_limit" and "resources.arsc" in str(caught.value)


def test_v1_signature_file_bomb_is_refused(tmp_path: Path) -> None:
    """The signer block read for certMd5 goes through the same bounded reader."""
    bomb = bytes(2 << 20)
    path = write(tmp_path, "sig.apk", with_entry("v1only.apk", "META-INF/RELEASE.RSA", bomb))
    names = zipfile.ZipFile(path).namelist()
    assert "META-INF/RELEASE.RSA" in names and "META-INF/RELEASE.SF" in names
    with pytest.raises(ApkError, match=r"META-INF/RELEASE\.RSA .*limit"):
        read_apk_metadata(path, SMALL)


def test_stored_entry_over_the_limit_is_refused(tmp_path: Path) -> None:
    """A stored (uncompressed) manifest larger than its limit is refused too."""
    path = write(
        tmp_path,
        "stored.apk",
        raw_zip([RawEntry(MANIFEST, bytes(600_000), method=0, real_size=600_000)]),
    )
    with pytest.raises(ApkError, match=r"AndroidManifest\.xml .*524288 bytes"):
        read_apk_metadata(path, SMALL)


@pytest.mark.parametrize(
    ("reader", "error", "extra"),
    [
        (read_apk_metadata, ApkError, {}),
        (read_ota_metadata, OtaPackageError, {OTA_METADATA: OTA_TEXT}),
    ],
    ids=["apk", "ota"],
)
def test_too_many_entries_are_refused_before_the_table_is_built(
    tmp_path: Path, reader: Reader, error: type[FormatError], extra: dict[str, bytes]
) -> None:
    """More central-directory entries than max_entries: refused naming the limit."""
    path = write(tmp_path, "many.zip", many_entries(60, extra))
    with pytest.raises(error) as caught:
        reader(path, SMALL)
    assert caught.value.reason == "over_limit" and "more than 50 entries" in str(caught.value)
    try:  # the control: 10 entries pass the count (an APK without a manifest fails later)
        reader(write(tmp_path, "few.zip", many_entries(10, extra)), SMALL)
    except FormatError as exc:
        assert exc.reason == "no_manifest"


def test_ota_metadata_declaring_too_much_is_refused_before_inflating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "ota.zip", declared_bomb(OTA_METADATA, 1 << 20))
    no_inflating(monkeypatch)
    with pytest.raises(OtaPackageError) as caught:
        read_ota_metadata(path, SMALL)
    assert caught.value.reason == "over_limit"
    assert OTA_METADATA in str(caught.value) and "65536" in str(caught.value)


def test_ota_metadata_lying_about_its_size_stops_at_the_limit(tmp_path: Path) -> None:
    """The issue's second bomb: metadata that declares 100 bytes and inflates to 64 MiB."""
    path = write(tmp_path, "ota.zip", lying_bomb(OTA_METADATA, 64 << 20, prefix=OTA_TEXT))
    with pytest.raises(OtaPackageError) as caught:
        read_ota_metadata(path, SMALL)
    assert caught.value.reason == "over_limit" and OTA_METADATA in str(caught.value)


def test_ota_metadata_lying_small_within_limits_is_a_bad_zip(tmp_path: Path) -> None:
    """An entry inflating to other than it declares (or with another CRC) is bad_zip."""
    data = zeros_deflated(2000, prefix=OTA_TEXT)
    path = write(tmp_path, "ota.zip", raw_zip([RawEntry(OTA_METADATA, data, declared=100)]))
    with pytest.raises(OtaPackageError) as caught:
        read_ota_metadata(path)
    assert caught.value.reason == "bad_zip"


def test_ota_with_a_good_crc_and_size_is_read_from_a_raw_zip(tmp_path: Path) -> None:
    """The hand-written zip itself is fine when it tells the truth (the test's control)."""
    data = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = data.compress(OTA_TEXT) + data.flush()
    entry = RawEntry(
        OTA_METADATA, stream, real_size=len(OTA_TEXT), crc=zlib.crc32(OTA_TEXT) & 0xFFFFFFFF
    )
    path = write(tmp_path, "ota.zip", raw_zip([entry]))
    assert read_ota_metadata(path).pre_devices == ("walleye",)


def test_ota_zip64_with_prefix_is_read(tmp_path: Path) -> None:
    """A zip64 end record (over 65,535 entries) and data prepended to the archive are found as
    zipfile finds them, when the limits allow that many entries."""
    archive = b"#!/bin/sh\nexit 0\n" + many_entries(70_000, {OTA_METADATA: OTA_TEXT})
    path = write(tmp_path, "big.zip", archive)
    meta = read_ota_metadata(path, ZipLimits(max_entries=80_000))
    assert meta.ab_update and meta.pre_devices == ("walleye",)
    with pytest.raises(OtaPackageError, match="more than 65535 entries"):
        read_ota_metadata(path)


def test_real_apks_still_read_within_the_default_limits() -> None:
    """The committed APKs are far inside every limit: same identity as before."""
    for name, want in expected_apks().items():
        if want["certMd5"]:
            assert read_apk_metadata(APKS / name).version_code == want["versionCode"]


@pytest.mark.parametrize(
    "raw",
    ["9223372036854775808", "2147483648", "-1", "١٢٣", "1_000", " 12 x", "9" * 5000, "0x1FFFFFFFF"],
)
def test_version_code_out_of_range_or_not_ascii_digits_is_named(tmp_path: Path, raw: str) -> None:
    """A string versionCode that is not an int of 0..2^31-1 in ASCII digits is ApkError naming
    versionCode (2^63 reached SQLite and answered 500; int() took Arabic-Indic digits)."""
    path = write(tmp_path, "vc.apk", apk_with_version_code(raw))
    with pytest.raises(ApkError) as caught:
        read_apk_metadata(path)
    assert caught.value.reason == "bad_manifest" and "versionCode" in str(caught.value)


@pytest.mark.parametrize(("raw", "want"), [("42", 42), ("0x10", 16), ("2147483647", 2**31 - 1)])
def test_version_code_as_a_string_within_range_is_read(tmp_path: Path, raw: str, want: int) -> None:
    path = write(tmp_path, "vc.apk", apk_with_version_code(raw))
    assert read_apk_metadata(path).version_code == want


def test_a_corrupt_deflate_stream_is_bad_zip(tmp_path: Path) -> None:
    """Garbage where a deflate stream should be is bad_zip (as a truncated zip is), not a crash."""
    garbage = bytes(range(256)) * 4
    archive = raw_zip([RawEntry(MANIFEST, garbage, declared=4096, real_size=4096)])
    with pytest.raises(ApkError) as caught:
        read_apk_metadata(write(tmp_path, "corrupt.apk", archive), SMALL)
    assert caught.value.reason == "bad_zip" and MANIFEST in str(caught.value)
    ota = raw_zip([RawEntry(OTA_METADATA, garbage, declared=4096, real_size=4096)])
    with pytest.raises(OtaPackageError) as caught_ota:
        read_ota_metadata(write(tmp_path, "corrupt.zip", ota), SMALL)
    assert caught_ota.value.reason == "bad_zip"
