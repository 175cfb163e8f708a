"""``forge sync --via registry``: through the group's own registry (``[registry]`` in hosts.toml).

The source pushes the image (docker sends only the layers the registry lacks), then every
target pulls it at once, by digest, so what each gets is exactly what was pushed whatever
happens to the tag meanwhile. forge then checks the ID on each target (a classic store: the
config digest, the source's ID; a containerd store: the pushed manifest's digest) and only then
gives it the wanted tags.

Credentials are docker's own: each host must have run ``docker login ADDRESS`` (its credential
store or ``~/.docker/config.json``); forge never sees or passes a secret. A push the registry
refuses (auth, down, full) leaves every target to the other ways; a pull a host cannot make
leaves that host to them; each says why.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from forge.errors import HostError
from forge.images.inspect import CLASSIC, normalize_ref
from forge.images.plan import HostPlan
from forge.images.source import Source
from forge.images.wave import HostSync, SyncFailed, tag, verify
from forge.inventory import RegistrySettings
from forge.session import HostSession

_PUSHED = re.compile(r"^[^:\s]+: digest: (sha256:[0-9a-f]{64}) size: [0-9]+$", re.MULTILINE)
_TAG = re.compile(r"[^A-Za-z0-9_.-]")
_AUTH = ("unauthorized", "authentication required", "no basic auth credentials", "denied")


class RegistryError(HostError):
    """The registry would not take or give the image."""


@dataclass(frozen=True)
class Pushed:
    name: str  # ADDRESS/NAMESPACE/REPO (no tag)
    digest: str  # the pushed manifest's digest
    layers_pushed: int
    layers_there: int  # layers the registry already had


def remote_name(settings: RegistrySettings, tags: tuple[str, ...], image_id: str) -> tuple[str, str]:
    """Where the image goes in the registry: (repository, tag). The first wanted tag's path
    under the namespace; an image without a tag goes by its ID."""
    assert settings.address is not None
    name = normalize_ref(tags[0]) if tags else ""
    if name and "@" not in name:
        repo, _, tag_ = name.rpartition(":")
        first, _, rest = repo.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):  # another registry's name
            repo = rest
    else:
        repo, tag_ = "image", "id-" + image_id.removeprefix("sha256:")[:12]
    return f"{settings.address}/{settings.namespace}/{repo}", _TAG.sub("_", tag_)[:128]


def _why(s: HostSession, what: str, stderr: str, address: str) -> RegistryError:
    tail = " ".join(stderr.strip().splitlines()[-2:])[-300:] or "no output"
    hint = None
    if any(word in tail.lower() for word in _AUTH):
        hint = f"run `docker login {address}` as your user on {s.name} (forge uses docker's own credentials)"
    return RegistryError(s.name, f"{what}: {tail}", hint=hint)


def push(s: HostSession, src: Source, repo: str, tag_: str, address: str, timeout_s: float) -> Pushed:
    """Tag the image on its source with its registry name and push it."""
    ref = f"{repo}:{tag_}"
    r = s.run(s.docker("tag", src.image.id, ref), timeout=60)
    if not r.ok:
        raise _why(s, f"cannot tag the image as {ref}", r.stderr, address)
    r = s.run(s.docker("push", ref), timeout=timeout_s)
    if not r.ok:
        raise _why(s, f"the registry refused the push of {ref}", r.stderr or r.stdout, address)
    m = _PUSHED.search(r.stdout)
    if m is None:
        raise RegistryError(s.name, f"docker push of {ref} did not say the digest it pushed")
    lines = r.stdout.splitlines()
    pushed = sum(1 for ln in lines if ln.rstrip().endswith(": Pushed"))
    there = sum(1 for ln in lines if ln.rstrip().endswith(": Layer already exists"))
    return Pushed(repo, m.group(1), pushed, there)


def pull(
    s: HostSession, p: HostPlan, src: Source, pushed: Pushed, tags: tuple[str, ...], address: str, timeout_s: float
) -> HostSync:
    """Pull by digest, check, tag."""
    started = time.monotonic()
    ref = f"{pushed.name}@{pushed.digest}"
    r = s.run(s.docker("pull", "-q", ref), timeout=timeout_s)
    if not r.ok:
        raise _why(s, f"cannot pull {ref}", r.stderr, address)
    expected = src.config if p.have.store == CLASSIC else pushed.digest
    if not verify(s, src.image, expected, store=p.have.store):
        raise SyncFailed(s.name, f"the pulled image {expected[:19]} is not listed by the daemon; not tagged")
    tag(s, expected, tags)
    return HostSync(
        s.name,
        "send",
        layers_total=len(src.image.layers),
        layers_sent=len(src.image.layers) - len(p.skip),
        seconds=time.monotonic() - started,
        image_id=expected,
        via="registry",
    )


__all__ = ["Pushed", "RegistryError", "pull", "push", "remote_name"]
