"""The load archive forge writes, whatever the source and the target: one tar holding both the
OCI image layout and Docker's ``manifest.json``. Pure.

Every Docker Engine loads it (measured on 20.10, and on 26.1 with either image store):

- the classic image store (20.10, 26 without the containerd store) reads ``manifest.json``:
  the image's ID is its config digest;
- the containerd image store reads the OCI layout (``oci-layout``, ``index.json`` and the
  manifest blob) whenever ``oci-layout`` is present: the image's ID is the manifest's digest.

Members: ``blobs/sha256/<digest>`` for the config and for each layer sent, then (written by
:func:`tail`) the manifest blob, ``oci-layout``, ``index.json`` and ``manifest.json``, so a
stream cut anywhere before its end loads nothing on either store. Neither names the image:
``docker load`` tags nothing, and forge tags the image once it has checked what arrived.

A layer a target already has is simply left out: the classic store looks a layer up by its
chain ID before opening its file; the containerd store finds the blob in its content store by
digest (it must hold that very blob: see :mod:`forge.images.sync` for a target that holds the
layer under another, compressed, blob).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from forge.errors import ForgeError

BLOCK = 512
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'


class ManifestError(ForgeError):
    """An image manifest (or index) forge cannot use."""


@dataclass(frozen=True)
class Blob:
    """A content-addressed piece of an image, as a manifest describes it."""

    digest: str  # sha256:...
    size: int
    media_type: str = LAYER

    @property
    def path(self) -> str:
        return blob_path(self.digest)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """One image manifest: its exact bytes and what it names."""

    data: bytes
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def digest(self) -> str:
        return digest_of(self.data)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_path(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def _compact(value: Any) -> bytes:
    # The field order and compact form of Go's encoding/json, which Docker writes: Engine 26's
    # `docker save` of a classic-store image holds a manifest byte for byte equal to this.
    return json.dumps(value, separators=(",", ":")).encode()


def canonical(config: Blob, layers: Sequence[Blob]) -> Manifest:
    """The OCI manifest of a config and uncompressed layers (blob digest = diff ID)."""
    data = _compact(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": Blob(config.digest, config.size, CONFIG).descriptor(),
            "layers": [b.descriptor() for b in layers],
        }
    )
    return Manifest(data, Blob(config.digest, config.size, CONFIG), tuple(layers))


def parse_manifest(data: bytes) -> Manifest:
    """An OCI or Docker v2 image manifest; an index is a :class:`ManifestError` (see
    :func:`parse_index`)."""
    try:
        doc = json.loads(data)
        media = doc.get("mediaType", MANIFEST if "config" in doc else INDEX)
        if media in (INDEX, DOCKER_LIST) or "manifests" in doc:
            raise ManifestError("this is an image index, not a manifest")
        config = _blob(doc["config"])
        layers = tuple(_blob(d) for d in doc["layers"])
    except ManifestError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ManifestError(f"not an image manifest: {e}") from None
    return Manifest(bytes(data), config, layers)


def parse_index(data: bytes) -> list[tuple[Blob, dict[str, str]]]:
    """The manifests an index lists, each with its platform (os, architecture, variant)."""
    try:
        doc = json.loads(data)
        out = []
        for d in doc["manifests"]:
            platform = {k: str(v) for k, v in (d.get("platform") or {}).items() if isinstance(v, str)}
            out.append((_blob(d), platform))
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ManifestError(f"not an image index: {e}") from None
    return out


def is_index(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and ("manifests" in doc or doc.get("mediaType") in (INDEX, DOCKER_LIST))


def _blob(d: Any) -> Blob:
    digest, size, media = d["digest"], d["size"], d.get("mediaType", LAYER)
    if not (isinstance(digest, str) and digest.startswith("sha256:") and len(digest) == 71):
        raise ManifestError(f"unsupported digest {digest!r}")
    if not isinstance(size, int) or size < 0:
        raise ManifestError(f"bad size {size!r}")
    return Blob(digest, size, str(media))


# --------------------------------------------------------------------------- tar members


def header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(format=tarfile.PAX_FORMAT)


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def member(name: str, data: bytes) -> bytes:
    return header(name, len(data)) + data + padding(len(data))


def index_json(manifest: Manifest) -> bytes:
    """The layout's index: the manifest, with no name (the image loads untagged)."""
    entry = Blob(manifest.digest, len(manifest.data), _media(manifest.data)).descriptor()
    return _compact({"schemaVersion": 2, "mediaType": INDEX, "manifests": [entry]})


def _media(data: bytes) -> str:
    try:
        return str(json.loads(data).get("mediaType") or MANIFEST)
    except (ValueError, AttributeError):
        return MANIFEST


def docker_manifest_json(manifest: Manifest) -> bytes:
    """``manifest.json`` for the classic store: config and layers by their blob paths."""
    return _compact([{"Config": manifest.config.path, "RepoTags": [], "Layers": [b.path for b in manifest.layers]}])


def tail(manifest: Manifest) -> bytes:
    """What ends every archive: the manifest blob, the layout, both indexes, end of archive."""
    return (
        member(blob_path(manifest.digest), manifest.data)
        + member("oci-layout", OCI_LAYOUT)
        + member("index.json", index_json(manifest))
        + member("manifest.json", docker_manifest_json(manifest))
        + bytes(2 * BLOCK)
    )
