"""What images a host has: one round trip, a fixed command and a pure parser.

``survey`` lists every image of the host's daemon (``-a``, so intermediate build images
count too) with its ID, size, tags and RootFS diff IDs, plus which decompressors the host
has and which image store its daemon keeps. The layers a host has are the chain IDs of every
prefix of every image's RootFS.

An image's ID depends on the store: with the classic store (Engine 20.10, and later ones by
default) it is the digest of the image's config; with the containerd image store (an option
of Engine 24+, the default of newer ones) it is the digest of its manifest (or index).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

from forge import dockercli, shell
from forge.errors import HostError
from forge.images.layers import chain_ids
from forge.session import HostSession

#: One line per image: ``image ID SIZE TAGS_JSON LAYERS_JSON`` (``json`` output has no spaces).
FORMAT = "image {{.Id}} {{.Size}} {{json .RepoTags}} {{json .RootFS.Layers}}"
TOOLS = ("zstd", "bzip2", "gzip")

# $1 is the inspect format, then "$@" the docker command for this host (docker [-H ...]).
# The image IDs are hex digests, safe to split unquoted.
_SURVEY = """
fmt=$1; shift
for t in zstd bzip2 gzip; do command -v "$t" >/dev/null 2>&1 && echo "tool $t"; done
printf 'daemon '; "$@" info --format '{{json .ServerVersion}} {{json .DriverStatus}}' || exit 3
ids=$("$@" image ls -aq --no-trunc) || exit 3
[ -z "$ids" ] && exit 0
"$@" image inspect --format "$fmt" $ids
exit 0
"""


class ImageNotFound(HostError):
    """The image to sync is not on the source host."""


@dataclass(frozen=True)
class ImageInfo:
    id: str  # sha256:... (the config digest)
    size_bytes: int  # the sum of the layers' unpacked sizes, as docker reports it
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]  # RootFS diff IDs, bottom first

    @cached_property
    def chains(self) -> tuple[str, ...]:
        return tuple(chain_ids(self.layers))


CLASSIC = "classic"
CONTAINERD = "containerd"


@dataclass(frozen=True)
class HostImages:
    """Every image of one host's daemon, the decompressors it can run, and its image store."""

    images: tuple[ImageInfo, ...] = ()
    tools: frozenset[str] = field(default_factory=frozenset)
    store: str = CLASSIC  # CLASSIC or CONTAINERD
    engine: str = ""  # the daemon's version, e.g. "26.1.5+dfsg1"

    @cached_property
    def chain_ids(self) -> frozenset[str]:
        return frozenset(c for img in self.images for c in img.chains)

    def by_id(self, image_id: str) -> ImageInfo | None:
        return next((i for i in self.images if i.id == image_id), None)

    def tagged(self, ref: str) -> ImageInfo | None:
        ref = normalize_ref(ref)
        return next((i for i in self.images if ref in i.repo_tags), None)


def normalize_ref(ref: str) -> str:
    """A name as docker lists it in RepoTags: ``name`` -> ``name:latest``, Docker Hub's
    ``docker.io/library/name`` -> ``name``; digests and image IDs unchanged."""
    if ref.startswith("sha256:"):
        return ref
    for registry in ("docker.io/", "index.docker.io/"):  # Docker Hub names are listed short
        if ref.startswith(registry):
            ref = ref[len(registry) :]
            break
    if ref.startswith("library/") and ref.count("/") == 1:
        ref = ref[len("library/") :]
    if "@" in ref or ":" in ref.rsplit("/", 1)[-1]:
        return ref
    return ref + ":latest"


def is_image_id(ref: str) -> bool:
    hexpart = ref.removeprefix("sha256:")
    return len(hexpart) in (12, 64) and all(c in "0123456789abcdef" for c in hexpart) and ":" not in hexpart


def parse_image_line(line: str) -> ImageInfo | None:
    parts = line.strip().split(" ")
    if len(parts) != 5 or parts[0] != "image":
        return None
    _, image_id, size, tags, layers = parts
    try:
        tag_list = json.loads(tags) or []
        layer_list = json.loads(layers) or []
        size_bytes = int(size)
    except ValueError:
        return None
    return ImageInfo(image_id, size_bytes, tuple(tag_list), tuple(layer_list))


def parse_daemon(line: str) -> tuple[str, str]:
    """``docker info``'s ``{{json .ServerVersion}} {{json .DriverStatus}}`` -> (engine, store)."""
    decoder = json.JSONDecoder()
    try:
        engine, end = decoder.raw_decode(line)
        status, _ = decoder.raw_decode(line[end:].lstrip())
    except ValueError:
        return "", CLASSIC
    pairs = status if isinstance(status, list) else []
    containerd = any(isinstance(p, list) and "io.containerd.snapshotter.v1" in p for p in pairs)
    return (engine if isinstance(engine, str) else ""), (CONTAINERD if containerd else CLASSIC)


def parse_survey(stdout: str) -> HostImages:
    images: dict[str, ImageInfo] = {}
    tools: set[str] = set()
    engine, store = "", CLASSIC
    for line in stdout.splitlines():
        if line.startswith("tool "):
            tools.add(line.split(" ", 1)[1].strip())
        elif line.startswith("daemon "):
            engine, store = parse_daemon(line[len("daemon ") :])
        elif (info := parse_image_line(line)) is not None:
            images.setdefault(info.id, info)
    return HostImages(tuple(images.values()), frozenset(tools), store, engine)


def survey_command(s: HostSession) -> shell.Script:
    return shell.script(_SURVEY, FORMAT, *s.docker_words)


def survey(s: HostSession, *, timeout: float | None = None) -> HostImages:
    """The host's images, tools and image store, in one round trip."""
    result = s.run(survey_command(s), timeout=timeout)
    if not result.ok:
        failed = dockercli.failure(s.host, result.stderr + result.stdout, result.exit_status)
        if failed is not None:
            raise failed
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.exit_status}"]
        raise HostError(s.name, f"cannot list Docker images: {tail[0]}")
    return parse_survey(result.stdout)


def inspect_image(s: HostSession, ref: str, *, timeout: float | None = None) -> ImageInfo:
    """One image on one host, by name or ID."""
    result = s.run(s.docker("image", "inspect", "--format", FORMAT, ref), timeout=timeout)
    info = parse_image_line(result.stdout.strip().splitlines()[0]) if result.ok and result.stdout.strip() else None
    if info is None:
        if "no such image" in result.stderr.lower():
            raise ImageNotFound(s.name, f"has no image {ref!r}")
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit status {result.exit_status}"]
        raise HostError(s.name, f"cannot inspect image {ref!r}: {tail[0]}")
    return info
