"""One image's sync, as every way of sending it (:mod:`~forge.images.wave` through this
machine, :mod:`~forge.images.direct` host to host or along a chain, the registry) needs it."""

from __future__ import annotations

from dataclasses import dataclass

from forge.fleet import Pool
from forge.images.source import Source
from forge.progress import Progress


@dataclass(frozen=True)
class Job:
    src: Source  # the image on its source
    tags: tuple[str, ...]  # the tags it gets on each target, once checked
    pool: Pool
    progress: Progress
    timeout_s: float  # what one host's transfer may take
    compress: str = "auto"  # the --compress asked for
