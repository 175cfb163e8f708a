"""The Docker engines a lab host can run ("flavors"), and which GPU host gets which.

- ``bookworm``: this machine's Debian 12 ``docker.io`` (Engine 20.10), run as it is.
- ``trixie``: Debian 13's ``docker.io`` (Engine 26.1) from a debootstrapped trixie root,
  run in the host's network namespace in its own mount and pid namespace, chrooted.
- ``trixie-containerd``: the same with the containerd image store turned on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flavor:
    name: str
    suite: str | None  # the Debian suite of the engine's root; None: this machine's engine
    containerd_store: bool = False  # the containerd image store (containerd-snapshotter)

    @property
    def chroot(self) -> bool:
        """Whether the daemon runs from its own root file system."""
        return self.suite is not None


FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        Flavor("bookworm", None),
        Flavor("trixie", "trixie"),
        Flavor("trixie-containerd", "trixie", containerd_store=True),
    )
}
DEFAULT_FLAVORS: tuple[str, ...] = ("bookworm",)


def check_flavors(names: tuple[str, ...]) -> tuple[str, ...]:
    """The names, checked: at least one, each a known flavor."""
    if not names:
        raise ValueError("give at least one flavor")
    unknown = [n for n in names if n not in FLAVORS]
    if unknown:
        raise ValueError(f"unknown flavor {', '.join(unknown)}: choose from {', '.join(FLAVORS)}")
    return names


def parse_flavors(text: str) -> tuple[str, ...]:
    """``"bookworm,trixie"`` -> ``("bookworm", "trixie")``, checked."""
    return check_flavors(tuple(part.strip() for part in text.split(",") if part.strip()))


def flavor_for(flavors: tuple[str, ...], index: int) -> str:
    """The flavor of GPU host ``index`` (1-based): the list in turn, wrapping."""
    return flavors[(index - 1) % len(flavors)]


def flavor(name: str) -> Flavor:
    return FLAVORS[name]


def suites(names: tuple[str, ...]) -> list[str]:
    """The Debian suites whose roots these flavors need, each once, in order."""
    found: list[str] = []
    for n in names:
        suite = FLAVORS[n].suite
        if suite is not None and suite not in found:
            found.append(suite)
    return found
