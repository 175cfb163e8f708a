"""Imports paramiko pulls in that forge defers until they are used.

``paramiko.config`` imports invoke when it is imported, only to run the commands of ``Match
exec`` lines in an ssh config; that import is about a sixth of a ``forge gpus`` process's start
(invoke's vendored YAML, asyncio and ``unittest.mock`` under it: ~50 ms). :func:`defer_invoke`
puts a stand-in module in its place whose first attribute lookup imports the real one and
answers from it, so a ``Match exec`` line still runs, and nothing changes where invoke was
already imported (``invoke deploy``). (``importlib.util.LazyLoader`` cannot do this: the
import statement itself reads the lazy module's ``__spec__``, which loads it.)
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any


class _Deferred(types.ModuleType):
    """``invoke`` until something looks inside it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_load(self), name)


def _load(stand_in: types.ModuleType) -> types.ModuleType:
    if sys.modules.get(stand_in.__name__) is stand_in:
        del sys.modules[stand_in.__name__]
    return importlib.import_module(stand_in.__name__)


def defer_invoke() -> None:
    if "invoke" in sys.modules or "paramiko.config" in sys.modules:
        return
    if importlib.util.find_spec("invoke") is None:
        return  # not installed: paramiko says so itself when a Match exec needs it
    stand_in = _Deferred("invoke")
    stand_in.__spec__ = None
    sys.modules["invoke"] = stand_in
