"""Quantities written by operators in configuration files."""

from __future__ import annotations

import re

from binderbuild.errors import ConfigError

_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def parse_bytes(value: str | int) -> int:
    """'2G', '512M', '1.5GiB', 1073741824 -> bytes (binary units)."""
    if isinstance(value, int):
        return value
    if not value:
        return 0
    match = _BYTES.match(value)
    if not match:
        raise ConfigError(f"Not a byte size: {value!r} (use e.g. 512M, 2G)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMGT".index(unit.upper() or "_"))
