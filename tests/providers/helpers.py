"""Assertions the provider tests share: what a resolved ref holds, and which
specs a provider refuses (at parse time, or when resolving against a replay)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from binderbuild.models import ResolvedRef

# (spec, error class, regex the message must match or None for any message)
ErrorCase = tuple[str, type[Exception], str | None]


def assert_ref(ref: ResolvedRef, **expected: Any) -> None:
    """Every named field of `ref` has the expected value (one diff for all)."""
    actual = {field: getattr(ref, field) for field in expected}
    assert actual == expected


async def expect_errors(provider: Any, cases: Sequence[ErrorCase]) -> list[Exception]:
    """Resolve each spec with the one provider, in order (so they share its
    replay client and caches, as requests within one service do); each must
    fail as given. Returns the errors, for checks beyond the message."""
    raised: list[Exception] = []
    for spec, error, match in cases:
        try:
            with pytest.raises(error, match=match) as info:
                await provider.resolve(spec)
        except BaseException as failure:
            # pytest's "DID NOT RAISE" does not say which spec it was.
            failure.add_note(f"while resolving {spec!r}")
            raise
        raised.append(info.value)
    return raised


def expect_parse_error(provider: Any, spec: str, error: type[Exception], match: str) -> None:
    """parse() alone (no I/O) refuses `spec`."""
    with pytest.raises(error, match=match):
        provider.parse(spec)
