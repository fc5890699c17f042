"""midm_common.ota: META-INF/com/android/metadata parsed from real zips, failures named."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import OtaPackageError
from midm_common.ota import parse_metadata_text, read_ota_metadata
from tests.helpers import ota_zip


def write(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "ota.zip"
    path.write_bytes(content)
    return path


def test_full_ab_package(tmp_path: Path) -> None:
    """ota-type AB, pre-device list, post-build and post-timestamp are read."""
    meta = read_ota_metadata(
        write(
            tmp_path,
            ota_zip(
                {
                    "ota-type": "AB",
                    "pre-device": "a|b",
                    "post-build": "fp/2",
                    "post-timestamp": "1700000000",
                }
            ),
        )
    )
    assert meta.ab_update and meta.pre_devices == ("a", "b")
    assert (meta.post_build, meta.post_timestamp, meta.is_partial) == ("fp/2", 1700000000, False)


def test_incremental_block_package(tmp_path: Path) -> None:
    """A BLOCK incremental has pre-build (partial) and may allow downgrade."""
    meta = read_ota_metadata(
        write(
            tmp_path,
            ota_zip(
                {
                    "ota-type": "BLOCK",
                    "pre-build": "fp/1",
                    "post-build": "fp/2",
                    "ota-downgrade": "yes",
                }
            ),
        )
    )
    assert not meta.ab_update and meta.is_partial and meta.downgrade
    assert meta.post_timestamp is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"garbage", "bad_zip"),
        (ota_zip(None), "no_metadata"),
        (ota_zip({"post-timestamp": "x"}), "bad_metadata"),
    ],
)
def test_bad_packages(tmp_path: Path, content: bytes, reason: str) -> None:
    """Non-zip, missing metadata and bad values raise OtaPackageError with a reason."""
    with pytest.raises(OtaPackageError) as caught:
        read_ota_metadata(write(tmp_path, content))
    assert caught.value.reason == reason


def test_metadata_text_rules() -> None:
    """Blank lines are skipped, values keep inner '=', a line without '=' is an error."""
    assert parse_metadata_text("a=1\n\nb=x=y\n") == {"a": "1", "b": "x=y"}
    with pytest.raises(OtaPackageError):
        parse_metadata_text("no equals sign here")
