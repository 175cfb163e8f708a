"""What ``forge sync`` does on one host, decided from its survey: pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from forge.images import codec as codecs
from forge.images.inspect import CLASSIC, HostImages, ImageInfo, is_image_id, normalize_ref
from forge.inventory import Host

Action = Literal["current", "tag", "send"]


@dataclass(frozen=True)
class HostPlan:
    host: Host
    action: Action
    have: HostImages
    skip: frozenset[str] = frozenset()  # chain IDs of the source's layers the host has
    codec: codecs.Codec = codecs.CODECS["none"]
    stale_id: str | None = None  # the image the wanted tag points to now, if another one
    image_id: str | None = None  # the ID the image has (or will have) there; None: known after sending


def wanted_tags(ref: str, image: ImageInfo) -> tuple[str, ...]:
    """The tags to give the image on the targets: the name asked for, else the source's tags.

    ``ref`` is an ID when docker resolved it as one: any prefix of the image's ID (docker takes
    unique prefixes of any length, with or without ``sha256:``) that is not one of its names.
    """
    if "@" in ref or _is_id_of(ref, image):
        return image.repo_tags
    return (normalize_ref(ref),)


def _is_id_of(ref: str, image: ImageInfo) -> bool:
    if normalize_ref(ref) in image.repo_tags:  # docker looks a reference up by name first
        return False
    hexpart = ref.removeprefix("sha256:")
    full = image.id.removeprefix("sha256:")
    return bool(hexpart) and is_image_id(hexpart.ljust(64, "0")) and full.startswith(hexpart)


def plan_host(
    host: Host, have: HostImages, image: ImageInfo, tags: Sequence[str], compress: str, *, expected: str | None = None
) -> HostPlan:
    """Pure: what to do on one host, given its survey and the ID the image has there
    (``expected``; default: the source's ID, right when both keep the same kind of store)."""
    expected = image.id if expected is None and have.store == CLASSIC else expected
    stale = next((i.id for t in tags if (i := have.tagged(t)) is not None and i.id != expected), None)
    present = have.by_id(expected) if expected else None
    if present is not None and present.layers == image.layers:
        missing_tag = any(t not in present.repo_tags for t in tags)
        return HostPlan(host, "tag" if missing_tag else "current", have, stale_id=stale, image_id=expected)
    skip = frozenset(c for c in image.chains if c in have.chain_ids)
    codec = codecs.choose(compress, have.tools, codecs.local_tools())
    return HostPlan(host, "send", have, skip=skip, codec=codec, stale_id=stale, image_id=expected)
