"""The BinderHub migration table names only options binderbuild really has."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "migrating-from-binderhub.md"
OPTION = re.compile(r"`c\.(\w+)\.(\w+)`")


def configurable_classes() -> dict[str, type]:
    spec = importlib.util.spec_from_file_location(
        "gen_config_docs", ROOT / "scripts" / "gen_config_docs.py"
    )
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    from traitlets.config import Application

    classes = {cls.__name__: cls for cls in generator._load_classes(generator.MODULES)}
    classes["Application"] = Application
    return classes


def table_rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`c."):
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def test_every_binderbuild_option_in_the_table_exists() -> None:
    classes = configurable_classes()
    rows = table_rows()
    assert len(rows) > 80
    for binderhub, ours, notes in rows:
        for cls_name, option in OPTION.findall(ours + " " + notes):
            assert cls_name in classes, f"{binderhub}: unknown class {cls_name}"
            assert option in classes[cls_name].class_trait_names(config=True), (
                f"{binderhub}: {cls_name}.{option} does not exist"
            )


def test_same_name_rows_are_really_forwarded() -> None:
    from traitlets.config import Config

    from binderbuild.app import BinderBuild

    for binderhub, ours, _ in table_rows():
        theirs = OPTION.fullmatch(binderhub)
        mine = OPTION.fullmatch(ours)
        if not (theirs and mine and theirs.group(1) == "BinderHub" and mine.group(1) == "BinderBuild"):
            continue
        if theirs.group(2) != mine.group(2):
            continue
        app = BinderBuild()
        config = Config()
        config.BinderHub[theirs.group(2)] = getattr(app, mine.group(2))
        app.update_config(config)
        app._forward_binderhub_config()
        assert mine.group(2) in app.config.BinderBuild, f"{binderhub} is not forwarded"
