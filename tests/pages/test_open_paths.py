"""Server-side checks of urlpath/labpath/filepath (binderbuild.handlers.pages).

The vectors are shared with the page's own checks (static/js/redirect.js,
tests/pages/js/redirect.test.mjs): both sides must agree on every case.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from binderbuild.handlers.pages import (
    OPEN_PARAMS,
    UnsafePath,
    check_open_params,
    clean_urlpath,
    open_path,
    script_json,
)

VECTORS = json.loads((Path(__file__).parent / "redirect_vectors.json").read_text())["cases"]


def _args(params: dict[str, str]) -> dict[str, str | None]:
    return {name: params.get(name) for name in OPEN_PARAMS}


@pytest.mark.parametrize("case", VECTORS, ids=lambda c: json.dumps(c["params"], ensure_ascii=True)[:60])
def test_open_path_vectors(case: dict) -> None:
    if case["expect"] is None:
        with pytest.raises(UnsafePath):
            open_path(**_args(case["params"]))
    else:
        assert open_path(**_args(case["params"])) == case["expect"]


def test_hostile_vectors_are_reported_as_rejected() -> None:
    hostile = [c for c in VECTORS if c["expect"] is None]
    assert len(hostile) > 20
    for case in hostile:
        kept, rejected = check_open_params(_args(case["params"]))
        assert rejected, case
        for name in rejected:
            assert kept[name] is None
        # What is kept is safe on its own.
        open_path(**kept)


def test_safe_values_are_kept_verbatim() -> None:
    kept, rejected = check_open_params({"urlpath": "lab/tree/a b.ipynb", "labpath": None, "filepath": ""})
    assert rejected == []
    assert kept == {"urlpath": "lab/tree/a b.ipynb", "labpath": None, "filepath": None}


def test_token_in_urlpath_query_is_dropped() -> None:
    assert clean_urlpath("lab?token=abc&x=1") == "lab?x=1"


def test_too_long_is_refused() -> None:
    with pytest.raises(UnsafePath):
        clean_urlpath("a/" * 1001)


def test_script_json_cannot_close_the_script_element() -> None:
    text = script_json({"x": "</script><script>alert(1)</script><!--", "y": "a&b"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"x": "</script><script>alert(1)</script><!--", "y": "a&b"}
