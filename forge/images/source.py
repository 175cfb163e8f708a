"""The image on its source host: what it is on every kind of target, and how it will be read.

An image's identity is its config (the digest of the config is the image ID on a classic-store
daemon) and, on a containerd-store daemon, the manifest it was loaded with (its digest is the
ID there). forge knows both before sending wherever it can:

- a classic-store source: the config digest is the ID; the manifest is the canonical one of
  the uncompressed layers (:func:`forge.images.oci.canonical`), whose digest needs the layers'
  tar sizes: known up front from a readable layer store, else only once the stream has passed;
- a containerd-store source: the ID is the manifest's (or an index's) digest; the manifest
  itself, and through it the config digest and which blob holds which layer, comes from a
  pre-pass on the source host, ``docker save ID | tar -xO blobs/sha256/<ID>`` (the whole image
  is read there, a few KB cross the network; no API of Engine 26 gives a config digest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from forge import shell
from forge.errors import HostError
from forge.images import memo, oci
from forge.images.inspect import CLASSIC, CONTAINERD, ImageInfo, inspect_image, parse_daemon
from forge.images.layerstore import LayerStore, LayerStoreError, open_store, plan_archive
from forge.inventory import Host
from forge.session import HostSession

# $1: image ID, $2: the blob's hex digest, then the docker command for the host.
_BLOB = 'id=$1; blob=$2; shift 2; "$@" save "$id" | tar -xOf - "blobs/sha256/$blob"'
_DAEMON = "{{json .ServerVersion}} {{json .DriverStatus}}"
_PLATFORM = "[{{json .Os}},{{json .Architecture}},{{json .Variant}}]"


class SourceError(HostError):
    """The image cannot be read or understood on its source."""


@dataclass(frozen=True)
class Source:
    """The image to ship, as its source daemon holds it."""

    host: Host
    image: ImageInfo  # as the source reports it (ID: config or manifest digest, see store)
    store: str  # CLASSIC or CONTAINERD
    config: str  # the config digest
    manifest: oci.Manifest | None  # containerd source: its manifest; classic: the canonical one if sized
    layer_store: LayerStore | None = None  # a classic source's store, readable here
    store_note: str = ""  # why the layer store cannot be read, when it cannot

    def expected_id(self, store: str) -> str | None:
        """The image's ID on a daemon with this image store (None: known only after sending;
        a containerd store's is remembered from an earlier transfer, :mod:`forge.images.memo`)."""
        if store == CLASSIC:
            return self.config
        return self.manifest.digest if self.manifest is not None else memo.manifest_for(self.config)


def describe(s: HostSession, ref: str, *, read: str) -> Source:
    """Inspect ``ref`` on its source and learn what :class:`Source` holds (for a containerd
    source, with the pre-pass)."""
    image = inspect_image(s, ref)
    if not image.layers:
        raise SourceError(s.name, f"image {ref!r} has no layers to send")
    r = s.run(s.docker("info", "--format", _DAEMON), timeout=60)
    store = parse_daemon(r.stdout.strip())[1] if r.ok else CLASSIC
    if store == CONTAINERD:
        pulled = read_manifest(s, image)
        note = "the source keeps the containerd image store, which has no layer store"
        return Source(s.host, image, store, pulled.config.digest, pulled, store_note=note)
    layer_store, note = (None, "--read save") if read == "save" else open_store(s)
    manifest: oci.Manifest | None = None
    if layer_store is not None:
        try:
            manifest = plan_archive(layer_store, image, frozenset(image.chains)).manifest
        except LayerStoreError as e:
            layer_store, note = None, str(e)
    return Source(s.host, image, store, image.id, manifest, layer_store, note)


def read_manifest(s: HostSession, image: ImageInfo) -> oci.Manifest:
    """The pre-pass: the manifest of a containerd-store image, read on its host; for an index,
    the manifest of the platform the image was inspected as."""
    data = _blob(s, image.id, image.id)
    if oci.is_index(data):
        data = _blob(s, image.id, _platform_manifest(s, image, data))
    try:
        manifest = oci.parse_manifest(data)
    except oci.ManifestError as e:
        raise SourceError(s.name, f"cannot use the manifest of {image.id[:19]}: {e}") from None
    if len(manifest.layers) != len(image.layers):
        raise SourceError(s.name, f"the manifest of {image.id[:19]} does not list the image's layers")
    return manifest


def _blob(s: HostSession, image_id: str, digest: str) -> bytes:
    r = s.run(shell.script(_BLOB, image_id, digest.removeprefix("sha256:"), *s.docker_words), timeout=3600)
    data = r.stdout.encode()
    if not r.ok or oci.digest_of(data) != digest:
        tail = " ".join(r.stderr.split())[-200:] or f"exit status {r.exit_status}"
        raise SourceError(s.name, f"cannot read blob {digest[:19]} of image {image_id[:19]}: {tail}")
    return data


def _platform_manifest(s: HostSession, image: ImageInfo, index: bytes) -> str:
    r = s.run(s.docker("image", "inspect", "--format", _PLATFORM, image.id), timeout=60)
    try:
        os_, arch, variant = json.loads(r.stdout) if r.ok else ("", "", "")
    except ValueError:
        os_, arch, variant = "", "", ""
    for blob, platform in oci.parse_index(index):
        if platform.get("os") == os_ and platform.get("architecture") == arch:
            if not variant or platform.get("variant") in (None, variant):
                return blob.digest
    raise SourceError(s.name, f"the index {image.id[:19]} lists no manifest for {os_}/{arch}")
