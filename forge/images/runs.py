"""``forge sync`` over several images: one typed outcome per image and host.

The command line renders these and exits by them (:meth:`Outcome.served`); the library decides
what a failure means: when the source cannot give an image, every target misses that image
(the other images still go out).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from forge import fleet
from forge.errors import ConnectError, ExitCode, ForgeError
from forge.fleet import Pool
from forge.images.sync import HostPlan, SyncReport, plan, sync_image
from forge.inventory import Host
from forge.progress import NoProgress, Progress


@dataclass(frozen=True)
class Outcome:
    """What one image did on one host."""

    image: str
    host: str
    ok: bool
    action: str  # current, tag, send; failed
    read: str | None = None  # how the source was read, for a send: store or save
    codec: str | None = None
    layers_sent: int | None = None
    layers_total: int | None = None
    archive_bytes: int | None = None
    wire_bytes: int | None = None
    seconds: float = 0.0
    image_id: str | None = None  # the image's ID on that host
    error: str | None = None
    reached: bool = True  # False: the host could not be reached at all
    via: str | None = None  # for a send: "client" (through this machine) or "direct" (from the source)
    note: str | None = None  # why a host was sent through this machine though direct was asked for

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImageRun:
    """One image's run: the report (None when the source failed) and every host's outcome."""

    ref: str
    report: SyncReport | None
    outcomes: tuple[Outcome, ...]
    error: str | None = None  # why the source could not give the image


def sync_images(
    refs: Sequence[str],
    *,
    source: Host,
    targets: Sequence[Host],
    pool: Pool,
    progress: Callable[[str], Progress] | None = None,
    on_run: Callable[[ImageRun], None] | None = None,
    **options: Any,
) -> list[ImageRun]:
    """Sync each image in turn (``options``: those of :func:`forge.images.sync.sync_image`).

    With one image, a source failure raises; with several, it becomes that image's failed
    outcomes and the others still go out. ``progress(ref)`` draws one image's transfer."""
    runs = []
    for ref in refs:
        try:
            shown = progress(ref) if progress else NoProgress()
            report = sync_image(ref, source=source, targets=targets, pool=pool, progress=shown, **options)
        except ForgeError as e:
            if len(refs) == 1:
                raise
            runs.append(_source_failed(ref, e, source, targets))
        else:
            runs.append(ImageRun(ref, report, tuple(_outcome(ref, r, report) for r in report.results)))
        finally:
            if progress is not None and hasattr(shown, "close"):
                shown.close()
        if on_run:
            on_run(runs[-1])
    return runs


def _outcome(ref: str, r: fleet.HostResult[Any], report: SyncReport) -> Outcome:
    v = r.value
    if v is None:
        return Outcome(
            ref, r.host.name, False, "failed", seconds=r.duration_s, error=r.reason, reached=_reached(r.error)
        )
    return Outcome(
        ref,
        r.host.name,
        True,
        v.action,
        read=report.read if v.action == "send" else None,
        codec=v.codec,
        layers_sent=v.layers_sent,
        layers_total=v.layers_total,
        archive_bytes=v.tar_bytes,
        wire_bytes=v.wire_bytes,
        seconds=round(r.duration_s, 2),
        image_id=v.image_id,
        via=v.via if v.action == "send" else None,
        note=v.note or None,
    )


def _reached(error: BaseException | None) -> bool:
    return not isinstance(error, ConnectError)


def _source_failed(ref: str, e: ForgeError, source: Host, targets: Sequence[Host]) -> ImageRun:
    why = f"the source failed: {e}"
    outcomes = tuple(Outcome(ref, h.name, False, "failed", error=why) for h in targets if h.name != source.name)
    return ImageRun(ref, None, outcomes, error=str(e))


# --------------------------------------------------------------------------- --check


@dataclass(frozen=True)
class Status:
    """Whether one host has one image (``forge sync --check``)."""

    image: str
    host: str
    status: str  # current, untagged, stale, missing; unreachable, error
    source_id: str | None = None
    host_id: str | None = None  # what the host's tag points at now, when another image
    error: str | None = None

    @property
    def current(self) -> bool:
        return self.status == "current"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_images(
    refs: Sequence[str], *, source: Host, targets: Sequence[Host], pool: Pool, compress: str = "auto"
) -> list[Status]:
    """Every image's status on every target, from one plan each (nothing is sent)."""
    out: list[Status] = []
    others = [t for t in targets if t.name != source.name]
    for ref in refs:
        try:
            image, _, plans = plan(ref, source=source, targets=others, pool=pool, compress=compress)
        except ForgeError as e:  # nothing to compare this image's hosts with
            if len(refs) == 1:
                raise
            out += [Status(ref, h.name, "error", error=f"the source failed: {e}") for h in others]
            continue
        for r in plans:
            p: HostPlan | None = r.value
            status = _status(p) if p else ("unreachable" if isinstance(r.error, ConnectError) else "error")
            out.append(Status(ref, r.host.name, status, image.id, p.stale_id if p else None, r.reason or None))
    return out


def _status(p: HostPlan) -> str:
    if p.action == "current":
        return "current"
    if p.action == "tag":
        return "untagged"
    return "stale" if p.stale_id else "missing"


def exit_code(outcomes: Sequence[Outcome | Status]) -> ExitCode:
    """The fleet rule over (image, host) outcomes: an unreachable host did not answer; one
    that failed (or, for --check, is not current) answered but was not served."""
    hosts = []
    for o in outcomes:
        if isinstance(o, Status):
            hosts.append((o.status != "unreachable", o.current))
        else:
            hosts.append((o.reached, o.ok))
    return fleet.exit_code(hosts)
