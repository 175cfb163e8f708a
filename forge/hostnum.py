"""Numbers read from a host: the one check every parser of host output uses before ``int()``.

Everything a host prints is untrusted (other users there can run docker, and a broken tool
prints anything). ``str.isdigit()`` is not the check it looks like: it accepts ``²`` and
``①``, which ``int()`` rejects, and a number of thousands of digits passes it too, which
``int()`` refuses (more than 4300 digits) and ``float()`` reads as infinity. A parser that
trusted it raised on such a line instead of skipping it.
"""

from __future__ import annotations

#: More digits than any count, pid, port, size in bytes or timestamp forge reads.
MAX_DIGITS = 18


def natural(text: str, max_digits: int = MAX_DIGITS) -> int | None:
    """``text`` as an int when it is 1 to ``max_digits`` ASCII digits and nothing else
    (no sign, space or underscore); otherwise ``None``."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None
