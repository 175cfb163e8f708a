"""Errors of the lab: every one names what failed and what to do about it."""

from __future__ import annotations

from forge.errors import ForgeError


class LabError(ForgeError):
    """The lab could not be brought up, inspected or taken down."""
