"""forge: run a lab's fleet of GPU servers over SSH."""

__version__ = "0.1.0"
