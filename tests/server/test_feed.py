"""§6 image feed, pure: identity, A/B, base before region, partial vs full, chains, build dates."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.domain.feed import (
    DeviceBuild,
    FeedReason,
    FeedSettings,
    Image,
    before_start,
    build_of,
    image_of,
    select_image,
    settings_of,
)

DEVICE = DeviceBuild(
    fingerprint="b1",
    build_date=100,
    device_id="dev",
    product_id="prod",
    sku_id="sku",
    customer_id="cust",
    ab_update=True,
    region="r0",
)


def img(
    uuid: str, post: str, date: int, *, pre: str = "", size: int = 100, **extra: object
) -> Image:
    base: dict[str, object] = {"device_id": "dev", "product_id": "prod", "ab_update": True}
    base.update(extra)
    return Image(uuid=uuid, pre_build=pre, post_build=post, build_date=date, size=size, **base)  # type: ignore[arg-type]


FULL_B3 = img("full-b3", "b3", 300, size=1000)
P12 = img("p12", "b2", 200, pre="b1", size=100)
P23 = img("p23", "b3", 300, pre="b2", size=100)
PARTIAL_FIRST = FeedSettings(partial_first=True)


@pytest.mark.parametrize(
    ("images", "device", "settings", "expected", "reason"),
    [
        ([], DEVICE, FeedSettings(), None, FeedReason.NO_CANDIDATE),
        (
            [img("x", "b3", 300, device_id="other")],
            DEVICE,
            FeedSettings(),
            None,
            FeedReason.NOT_FOR_DEVICE,
        ),
        (
            [img("x", "b3", 300, product_id="other")],
            DEVICE,
            FeedSettings(),
            None,
            FeedReason.NOT_FOR_DEVICE,
        ),
        (
            [img("x", "b3", 300, sku_id="other")],
            DEVICE,
            FeedSettings(),
            None,
            FeedReason.NOT_FOR_DEVICE,
        ),
        (
            [img("x", "b3", 300, customer_id="other")],
            DEVICE,
            FeedSettings(),
            None,
            FeedReason.NOT_FOR_DEVICE,
        ),
        (
            [img("x", "b3", 300, ab_update=False)],
            DEVICE,
            FeedSettings(),
            None,
            FeedReason.NOT_FOR_DEVICE,
        ),
        (
            [img("x", "b3", 300, sku_id="sku", customer_id="cust")],
            DEVICE,
            FeedSettings(),
            "x",
            FeedReason.FULL,
        ),
        ([img("old", "b0", 50)], DEVICE, FeedSettings(), None, FeedReason.OLDER_BUILD),
        ([img("same", "b1x", 100)], DEVICE, FeedSettings(), None, FeedReason.OLDER_BUILD),
        (
            [img("old", "b0", 50)],
            DEVICE,
            FeedSettings(check_build_date=False),
            "old",
            FeedReason.FULL,
        ),
        ([img("nodate", "b9", None)], DEVICE, FeedSettings(), None, FeedReason.OLDER_BUILD),  # type: ignore[arg-type]
        ([FULL_B3, P12, P23], DEVICE, FeedSettings(), "full-b3", FeedReason.FULL),
        ([FULL_B3, P12, P23], DEVICE, PARTIAL_FIRST, "p12", FeedReason.PARTIAL_CHAIN),
        ([replace(FULL_B3, size=150), P12, P23], DEVICE, PARTIAL_FIRST, "full-b3", FeedReason.FULL),
        ([FULL_B3, P23], DEVICE, PARTIAL_FIRST, "full-b3", FeedReason.FULL),  # missing link b1->b2
        ([P12, P23], DEVICE, FeedSettings(), "p12", FeedReason.PARTIAL_CHAIN),  # no full: chain
        ([P23], DEVICE, FeedSettings(), None, FeedReason.NO_CANDIDATE),  # chain does not start here
        (
            [img("r", "r1", 300, type="region"), FULL_B3],
            DEVICE,
            FeedSettings(),
            "full-b3",
            FeedReason.FULL,
        ),
        (
            [img("r", "r1", 300, type="region", pre="b1")],
            DEVICE,
            FeedSettings(),
            "r",
            FeedReason.REGION,
        ),
        (
            [img("r", "r1", 300, type="region", pre="b3")],
            DEVICE,
            FeedSettings(),
            None,
            FeedReason.NO_CANDIDATE,
        ),
        (
            [img("r", "r0", 300, type="region")],
            DEVICE,
            FeedSettings(),
            None,
            FeedReason.NO_CANDIDATE,
        ),
        (
            [img("a", "b3", 300, size=5), img("b", "b3", 300, size=3)],
            DEVICE,
            FeedSettings(),
            "b",
            FeedReason.FULL,
        ),
        ([img("b", "b2", 200), img("a", "b3", 300)], DEVICE, FeedSettings(), "a", FeedReason.FULL),
    ],
)
def test_feed_table(
    images: list[Image],
    device: DeviceBuild,
    settings: FeedSettings,
    expected: str | None,
    reason: FeedReason,
) -> None:
    """One case per rule of §6; the decision names the image (or none) and the reason."""
    decision = select_image(images, device, settings)
    assert (decision.image.uuid if decision.image else None, decision.reason) == (expected, reason)


def test_chain_is_followed_to_the_target() -> None:
    """With partialFirst, b1 -> b2 -> b3 by partials, one step per check-in, then nothing."""
    device = DEVICE
    fed = []
    for _ in range(5):
        decision = select_image([FULL_B3, P12, P23], device, PARTIAL_FIRST)
        if decision.image is None:
            break
        fed.append(decision.image.uuid)
        device = replace(
            device, fingerprint=decision.image.post_build, build_date=decision.image.build_date
        )
    assert fed == ["p12", "p23"]


builds = st.sampled_from(["b0", "b1", "b2", "b3", "b4"])
images_strategy = st.lists(
    st.builds(
        Image,
        uuid=st.uuids().map(str),
        type=st.sampled_from(["base", "base", "region"]),
        ab_update=st.booleans(),
        device_id=st.sampled_from(["dev", "other"]),
        product_id=st.just("prod"),
        sku_id=st.sampled_from(["", "sku", "other"]),
        pre_build=st.one_of(st.just(""), builds),
        post_build=builds,
        build_date=st.one_of(st.none(), st.integers(0, 500)),
        size=st.integers(1, 1000),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(images_strategy, builds, st.integers(0, 500), st.booleans(), st.booleans())
def test_fed_image_is_for_device_and_never_older(
    images: list[Image], fingerprint: str, date: int, partial_first: bool, check: bool
) -> None:
    """A fed image is always for the device, and never older when checkBuildDate is set."""
    device = replace(DEVICE, fingerprint=fingerprint, build_date=date)
    decision = select_image(
        images, device, FeedSettings(partial_first=partial_first, check_build_date=check)
    )
    if decision.image is not None:
        image = decision.image
        assert image.device_id == "dev" and image.ab_update == device.ab_update
        assert image.sku_id in ("", "sku")
        if check:
            assert image.build_date is not None and image.build_date > date


@settings(max_examples=300, deadline=None)
@given(images_strategy, builds, st.integers(0, 500), st.booleans(), st.booleans())
def test_following_the_feed_terminates(
    images: list[Image], fingerprint: str, date: int, partial_first: bool, check: bool
) -> None:
    """Applying every fed image in turn reaches a state where nothing more is fed."""
    device = replace(DEVICE, fingerprint=fingerprint, build_date=date)
    feed_settings = FeedSettings(partial_first=partial_first, check_build_date=check)
    for _ in range(2 * len(images) + 2):
        decision = select_image(images, device, feed_settings)
        if decision.image is None:
            return
        image = decision.image
        if image.type == "region":
            device = replace(device, region=image.post_build)
        else:
            device = replace(device, fingerprint=image.post_build, build_date=image.build_date)
    pytest.fail(f"feed did not settle: {images} from {fingerprint}")


def test_a_profile_feeds_nothing_before_its_start() -> None:
    """not_before while either start time is ahead; from the start on, the feed decides."""
    later = {"profile": {"startsOn": "2026-09-21T14:13:21.000Z"}, "schedule_date": {}}
    at_start = 1_790_000_001_000
    waiting = before_start(later, at_start - 1)
    assert waiting is not None and waiting.reason == FeedReason.NOT_BEFORE and waiting.image is None
    assert before_start(later, at_start) is None
    both = {**later, "schedule_date": {"start_on": "2026-09-21T14:13:22.000Z"}}
    assert before_start(both, at_start) is not None  # the later of the two counts
    assert before_start({"profile": {}}, 0) is None


def test_stored_profiles_images_and_builds_map_to_feed_values() -> None:
    """settings.otas, a stored otaInfo and a check-in's build become the feed's inputs, with
    the protocol's defaults for what is absent."""
    assert settings_of({}) == FeedSettings(partial_first=False, check_build_date=True)
    assert settings_of(
        {"settings": {"otas": {"partialFirst": True, "checkBuildDate": False}}}
    ) == FeedSettings(partial_first=True, check_build_date=False)
    info = {"deviceId": "dev", "productId": "prod", "abUpdate": True, "postBuild": "b3"}
    assert image_of("u", {**info, "type": None, "buildDate": 300}, 42) == Image(
        uuid="u",
        device_id="dev",
        product_id="prod",
        ab_update=True,
        post_build="b3",
        build_date=300,
        size=42,
    )
    report = {"build": {"fingerprint": "b1", "buildDate": 100, "deviceId": "dev", "region": None}}
    assert build_of(report) == DeviceBuild(fingerprint="b1", build_date=100, device_id="dev")
    assert build_of({}) == DeviceBuild()
