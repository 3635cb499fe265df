"""docs/configuration.md is generated from the options' help text and is up to date."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"
DOCS = ROOT / "docs" / "configuration.md"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    assert spec is not None and spec.loader is not None, f"cannot load {SCRIPT}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_reference_is_up_to_date() -> None:
    generated = load_generator().render()
    assert DOCS.exists(), "docs/configuration.md is missing: run scripts/gen_config_docs.py"
    assert DOCS.read_text() == generated, (
        "docs/configuration.md is out of date: run `.venv/bin/python scripts/gen_config_docs.py`"
    )


def test_every_option_is_documented_with_help_and_environment() -> None:
    from binderbuild.app import BinderBuild, DockerRegistry
    from binderbuild.eventlog import EventLog
    from binderbuild.ratelimit import RateLimiter

    text = load_generator().render()
    assert "(no help text)" not in text, "an option has no help= text"
    for cls in (BinderBuild, DockerRegistry, RateLimiter, EventLog):
        for name, trait in cls.class_own_traits(config=True).items():
            heading = f"### `c.{cls.__name__}.{name}`"
            assert heading in text, f"{heading} missing"
            section = text.split(heading, 1)[1].split("\n### ", 1)[0]
            if env := trait.metadata.get("env"):
                assert f"Environment: `{env}`" in section, f"{name}: environment variable not shown"
    # The operations options added for operators are all there.
    for name in (
        "auth_enabled", "api_tokens", "cors_allow_origin", "enable_api_only_mode",
        "ban_networks", "trusted_proxies", "build_token_secret", "json_logs",
        "metrics_repo_labels", "health_check_ttl",
    ):
        assert f"### `c.BinderBuild.{name}`" in text


def test_output_does_not_depend_on_the_machine() -> None:
    text = load_generator().render()
    assert str(ROOT) not in text
    assert not re.search(r"/(root|home)/", text)


def test_missing_modules_are_tolerated(tmp_path: Path) -> None:
    generator = load_generator()
    text = generator.render(["binderbuild.not_written_yet", "binderbuild.ratelimit"])
    assert "## RateLimiter" in text
    assert "## BinderBuild" not in text
