"""Memory: what an export may use, what it is estimated to need, and what each stage used.

Filled in by issue 26's work; ``parse_size`` is what ``--max-memory`` reads.
"""

from __future__ import annotations

import re

from exporter.errors import UsageError

__all__ = ["parse_size"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)


def parse_size(text: str, flag: str) -> int:
    """``12GiB``, ``12G``, ``800MB``, ``1.5T`` or a plain byte count, as bytes (K/M/G/T are powers of 1024
    with or without the ``i``: memory is counted in pages, and ``free -g`` means GiB too).

    Raises:
        UsageError: not a size; the message shows the accepted forms.
    """
    match = _SIZE.match(text)
    if not match or float(match[1]) <= 0:
        raise UsageError(f"{flag} '{text}' is not a size: write it like 12GiB, 12G, 800MB or 1.5T")
    scale = 1024 ** " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * scale)
