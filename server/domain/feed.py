"""The image feed (§6) as a pure function: (images, device build, settings) -> FeedDecision.

Theory of operation:
1. Identity: an image is for the device when `deviceId` and `productId` equal the device's,
   `skuId`/`customerId` equal them when set on the image, and `abUpdate` equals the device's
   partition scheme. With `checkBuildDate`, images whose `buildDate` is not newer than the
   device's (or unknown) are dropped too.
2. Base images come first. Targets are the `postBuild`s reachable from the device's fingerprint
   by one full image, or by a chain of partial images (the first `preBuild` is the fingerprint,
   each next `preBuild` the previous `postBuild`). The target is the newest (buildDate, then
   postBuild); nothing is fed when the device runs it, or runs a build the profile offers that
   ranks at least as high, so following the feed always ends (targets only ever get newer).
   With `partialFirst` the cheapest chain (by total size) is used unless it costs more than the
   full image; without it the full image, and a chain only when no full image leads there.
3. Region images [ours]: only when no base step is due. A region image applies when its
   `preBuild` is empty or equals the device's fingerprint (the base build it names); the newest
   that applies is the target, fed unless it is the device's current `region` already.
4. One step is fed at a time.
5. For a profile (`ota/next`): nothing before the profile's start (reason `not_before`); then
   its enabled images with its `settings.otas` (partialFirst false, checkBuildDate true unless
   set). Stored image info and the device's reported build map to `Image`/`DeviceBuild` here.
Reasons: fed `full`, `partial_chain`, `region`; none `no_candidate`, `not_for_device`,
`older_build`, `not_before`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from server.domain.profiles import start_of


class FeedReason(StrEnum):
    FULL = "full"
    PARTIAL_CHAIN = "partial_chain"
    REGION = "region"
    NO_CANDIDATE = "no_candidate"
    NOT_FOR_DEVICE = "not_for_device"
    OLDER_BUILD = "older_build"
    NOT_BEFORE = "not_before"


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    uuid: str
    type: str = "base"
    ab_update: bool = False
    device_id: str = ""
    product_id: str = ""
    sku_id: str = ""
    customer_id: str = ""
    pre_build: str = ""
    post_build: str = ""
    build_date: int | None = None
    size: int = 0

    @property
    def partial(self) -> bool:
        return bool(self.pre_build)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceBuild:
    fingerprint: str = ""
    build_date: int | None = None
    device_id: str = ""
    product_id: str = ""
    sku_id: str = ""
    customer_id: str = ""
    ab_update: bool = False
    region: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedSettings:
    partial_first: bool = False
    check_build_date: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedDecision:
    image: Image | None
    reason: FeedReason
    target: str = ""


def for_device(image: Image, device: DeviceBuild) -> bool:
    return (
        image.device_id == device.device_id
        and image.product_id == device.product_id
        and (not image.sku_id or image.sku_id == device.sku_id)
        and (not image.customer_id or image.customer_id == device.customer_id)
        and image.ab_update == device.ab_update
    )


def newer(image: Image, device: DeviceBuild) -> bool:
    if image.build_date is None:
        return False
    return device.build_date is None or image.build_date > device.build_date


def _rank(image: Image) -> tuple[int, str]:
    return (image.build_date if image.build_date is not None else -1, image.post_build)


def _cheapest_chains(start: str, partials: Sequence[Image]) -> dict[str, tuple[int, Image]]:
    """For each build reachable by partial images from `start`: (total size, first image)."""
    edges: dict[str, list[Image]] = {}
    for image in partials:
        edges.setdefault(image.pre_build, []).append(image)
    best: dict[str, tuple[int, Image]] = {}
    queue: list[tuple[int, int, str, Image | None]] = [(0, 0, start, None)]
    counter = 1
    settled: set[str] = set()
    while queue:
        cost, _, build, first = heapq.heappop(queue)
        if build in settled:
            continue
        settled.add(build)
        if first is not None:
            best[build] = (cost, first)
        for image in sorted(edges.get(build, ()), key=lambda i: i.uuid):
            if image.post_build not in settled:
                heapq.heappush(
                    queue, (cost + image.size, counter, image.post_build, first or image)
                )
                counter += 1
    return best


def _base_step(
    bases: Sequence[Image], offered: Sequence[Image], device: DeviceBuild, settings: FeedSettings
) -> FeedDecision | None:
    fulls: dict[str, Image] = {}
    for image in bases:
        if not image.partial:
            known = fulls.get(image.post_build)
            if known is None or (image.size, image.uuid) < (known.size, known.uuid):
                fulls[image.post_build] = image
    chains = _cheapest_chains(device.fingerprint, [i for i in bases if i.partial])
    ranks: dict[str, tuple[int, str]] = {}
    for image in bases:
        if image.post_build in fulls or image.post_build in chains:
            rank = _rank(image)
            ranks[image.post_build] = max(rank, ranks.get(image.post_build, rank))
    if not ranks:
        return None
    target = max(ranks, key=lambda build: ranks[build])
    if target == device.fingerprint:
        return None
    current = max((_rank(i) for i in offered if i.post_build == device.fingerprint), default=None)
    if current is not None and ranks[target] <= current:
        return None
    full = fulls.get(target)
    chain = chains.get(target)
    if chain is not None and (full is None or (settings.partial_first and chain[0] <= full.size)):
        return FeedDecision(image=chain[1], reason=FeedReason.PARTIAL_CHAIN, target=target)
    assert full is not None
    return FeedDecision(image=full, reason=FeedReason.FULL, target=target)


def _region_step(regions: Iterable[Image], device: DeviceBuild) -> FeedDecision | None:
    usable = [image for image in regions if image.pre_build in ("", device.fingerprint)]
    if not usable:
        return None
    image = max(usable, key=lambda i: (_rank(i), i.uuid))
    if image.post_build == device.region:
        return None
    return FeedDecision(image=image, reason=FeedReason.REGION, target=image.post_build)


def select_image(
    images: Sequence[Image], device: DeviceBuild, settings: FeedSettings
) -> FeedDecision:
    """The one image to feed next, or none with the reason."""
    if not images:
        return FeedDecision(image=None, reason=FeedReason.NO_CANDIDATE)
    mine = [image for image in images if for_device(image, device)]
    if not mine:
        return FeedDecision(image=None, reason=FeedReason.NOT_FOR_DEVICE)
    if settings.check_build_date:
        fresh = [image for image in mine if newer(image, device)]
        if not fresh:
            return FeedDecision(image=None, reason=FeedReason.OLDER_BUILD)
        mine = fresh
    offered_bases = [i for i in images if i.type != "region" and for_device(i, device)]
    step = _base_step([i for i in mine if i.type != "region"], offered_bases, device, settings)
    if step is None:
        step = _region_step([i for i in mine if i.type == "region"], device)
    return step or FeedDecision(image=None, reason=FeedReason.NO_CANDIDATE)


def before_start(doc: Mapping[str, Any], now: int) -> FeedDecision | None:
    """`not_before` while the profile's start is ahead of `now`, else None (feed as usual)."""
    start = start_of(doc)
    if start is not None and now < start:
        return FeedDecision(image=None, reason=FeedReason.NOT_BEFORE)
    return None


def settings_of(doc: Mapping[str, Any]) -> FeedSettings:
    """The feed settings of a stored profile (`settings.otas`)."""
    otas = (doc.get("settings") or {}).get("otas") or {}
    return FeedSettings(
        partial_first=bool(otas.get("partialFirst")),
        check_build_date=bool(otas.get("checkBuildDate", True)),
    )


def image_of(uuid: str, info: Mapping[str, Any], size: int) -> Image:
    """An image as stored: its `otaInfo` and its file's length."""
    return Image(
        uuid=uuid,
        type=info.get("type") or "base",
        ab_update=bool(info.get("abUpdate")),
        device_id=info.get("deviceId") or "",
        product_id=info.get("productId") or "",
        sku_id=info.get("skuId") or "",
        customer_id=info.get("customerId") or "",
        pre_build=info.get("preBuild") or "",
        post_build=info.get("postBuild") or "",
        build_date=info.get("buildDate"),
        size=size,
    )


def build_of(report: Mapping[str, Any]) -> DeviceBuild:
    """The device's build from its last check-in report (`build`, as validated)."""
    build = report.get("build") or {}
    return DeviceBuild(
        fingerprint=build.get("fingerprint") or "",
        build_date=build.get("buildDate"),
        device_id=build.get("deviceId") or "",
        product_id=build.get("productId") or "",
        sku_id=build.get("skuId") or "",
        customer_id=build.get("customerId") or "",
        ab_update=bool(build.get("abUpdate")),
        region=build.get("region") or "",
    )
