"""Running commands on hosts: locally or over SSH, one interface."""

from forge.transport.base import CommandResult, Transport

__all__ = ["CommandResult", "Transport"]
