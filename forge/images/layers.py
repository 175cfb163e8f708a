"""Layer identities: chain IDs, and which ``docker save`` directory holds which layer.

A daemon stores a layer under its *chain ID* (the layer together with every layer below it),
not its diff ID: the same diff ID on top of another parent is another layer. ``docker load``
skips reading a layer's ``layer.tar`` when the chain ID is already present, so that is the
key for "the host has it".

Docker Engine 20.10's ``docker save`` writes each layer into a directory named by a legacy v1
ID (``image/tarexport/save.go``, ``v1.CreateID``): the SHA-256 of the JSON object, keys
sorted, of the layer's v1 config without ``id``/``parent``, plus ``layer_id`` (the chain ID)
and ``parent`` (``sha256:`` + the parent's v1 ID). For every layer but the top one the v1
config is written to ``<dir>/json`` *after* the ID was computed, with ``os`` added. Both
variants are tried; the ``<dir>/json`` member comes before ``<dir>/layer.tar`` in the stream,
so a layer is identified before its bytes pass. A directory that matches nothing stays
unidentified, and its layer is sent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """Chain IDs of each prefix: chain(L1) = L1, chain(L1..n) = sha256(chain(L1..n-1) + " " + Ln)."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def go_json(value: Any) -> str:
    """``value`` as Go's encoding/json writes it: compact, non-ASCII kept, ``<>&`` escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for raw in ("<", ">", "&", "\u2028", "\u2029"):
        text = text.replace(raw, f"\\u{ord(raw):04x}")
    return text


def _v1_id(config: Mapping[str, Any], chain_id: str, parent: str | None) -> str:
    fields = dict(config)
    fields["layer_id"] = chain_id
    if parent:
        fields["parent"] = "sha256:" + parent
    body = "{" + ",".join(go_json(k) + ":" + go_json(fields[k]) for k in sorted(fields)) + "}"
    return hashlib.sha256(body.encode()).hexdigest()


def identify_v1_dir(v1_json: bytes, chains: Sequence[str]) -> int | None:
    """The index (0 = bottom) of the layer a save directory's ``json`` member describes.

    None when it matches no layer of ``chains``: the caller must then send that layer.
    """
    try:
        config = json.loads(v1_json)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(config, dict) or not isinstance(config.get("id"), str):
        return None
    want = config.pop("id")
    parent = config.pop("parent", None)
    if parent is not None and not isinstance(parent, str):
        return None
    variants = [config]
    if "os" in config:
        variants.append({k: v for k, v in config.items() if k != "os"})
    candidates = range(len(chains)) if parent else range(min(1, len(chains)))
    for variant in variants:
        for i in candidates:
            if _v1_id(variant, chains[i], parent) == want:
                return i
    return None
