"""The labels forge puts on the containers it starts, read back by the GPU probe
(:mod:`forge.gpu.probe`) and by the environment listing (:mod:`forge.env.listing`)."""

from __future__ import annotations

from datetime import datetime

ENV = "forge.env"
OWNER = "forge.owner"
SSH_PORT = "forge.ssh_port"
GPUS = "forge.gpus"  # comma-separated GPU UUIDs (or indexes) the container was given
USER = "forge.user"  # the user name inside the container (the one `ssh` logs in as)
# Labels of claim containers (never started; their name is the claim, see forge.env.claims).
CLAIM = "forge.claim"  # the GPU UUID claimed
CLAIM_ENV = "forge.claim.env"
CLAIM_OWNER = "forge.claim.owner"
CLAIM_CONTAINER = "forge.claim.container"  # the environment container the claim is for

#: A claim is made seconds before its container; one whose container is still missing after
#: this long is stale.
CLAIM_GRACE_S = 300.0


def parse_created(text: str) -> int | None:
    """docker's CreatedAt, e.g. ``2026-11-28 10:00:00 +0000 UTC``, as Unix time."""
    parts = text.split()
    if len(parts) < 3:
        return None
    try:
        return int(datetime.strptime(" ".join(parts[:3]), "%Y-%m-%d %H:%M:%S %z").timestamp())
    except ValueError:
        return None


# A place in line for GPUs (forge migrate --wait): a Docker volume on each host the waiter may
# land on, renewed while the waiter lives (forge/env/queue.py).
WAIT = "forge.wait"  # the waiter's ticket ID
WAIT_OWNER = "forge.wait.owner"
WAIT_ENV = "forge.wait.env"
WAIT_GPUS = "forge.wait.gpus"
WAIT_MIN_FREE = "forge.wait.min_free_mib"
WAIT_SINCE = "forge.wait.since"  # when the waiter first queued on this host (the host's clock)
WAIT_UNTIL = "forge.wait.until"  # the ticket counts until then unless renewed (the host's clock)

# What `forge reclaim` has seen of an environment (or of a process outside forge holding a GPU):
# a Docker volume per fact, ``forge-idle-<SUBJECT>-<KIND>`` (forge/env/idle.py).
IDLE = "forge.idle"  # the subject: an environment's container ID, or a process's hashed identity
IDLE_KIND = "forge.idle.kind"  # idle (first seen idle), warned, reclaimed
IDLE_SINCE = "forge.idle.since"  # when (the host's clock)
IDLE_ENV = "forge.idle.env"
IDLE_OWNER = "forge.idle.owner"
IDLE_IMAGE = "forge.idle.image"  # reclaimed: the image its changes were committed to
