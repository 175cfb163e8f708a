"""One probe of the fleet as rows of history: one :class:`Sample` per GPU that answered.

Pure: built from :func:`forge.gpu.survey.survey`'s reports. Who holds a GPU is
:func:`forge.gpu.holders.holders_of` (names that do not look like names are ``?``); held by
several, each gets a share.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from forge.gpu.holders import Holder, holders_of
from forge.gpu.survey import HostReport

#: A GPU or MIG device UUID as nvidia-smi prints it.
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]{1,80}\Z")
_MODEL = re.compile(r"^[ -~]{1,64}\Z")  # printable ASCII

UNKNOWN = "?"


@dataclass(frozen=True)
class Sample:
    """One GPU at one probe."""

    host: str
    uuid: str
    index: int
    model: str
    utilization_pct: float | None
    memory_used_mib: int | None
    power_w: float | None
    free: bool  # free by the host's policy
    holders: tuple[Holder, ...]  # () when nobody holds it


def samples_of(reports: Iterable[HostReport]) -> list[Sample]:
    """Every GPU of the hosts whose GPUs could be read (others leave a gap in the history)."""
    out: list[Sample] = []
    for rep in reports:
        if rep.gpus is None or not rep.gpus.ok:
            continue
        for v in rep.verdicts:
            g = v.gpu
            if not _UUID.match(g.uuid):
                continue  # not a GPU forge could name again: not recorded
            out.append(
                Sample(
                    host=rep.host.name,
                    uuid=g.uuid,
                    index=g.index,
                    model=g.name if g.name and _MODEL.match(g.name) else UNKNOWN,
                    utilization_pct=None if g.utilization_gpu_pct is None else float(g.utilization_gpu_pct),
                    memory_used_mib=g.memory_used_mib,
                    power_w=g.power_draw_w,
                    free=v.free,
                    holders=holders_of(v),
                )
            )
    return out
