"""The OpenAPI description: valid, the same in docs/ and as served, and true
to the running service (schemathesis sends its examples and generated
requests, valid and malformed, and checks every answer against it)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from openapi_spec_validator import validate

from tests.api.helpers import DOCS_OPENAPI, OPENAPI, call, wait_for
from tests.conftest import service_config

TOKEN = "fuzz-admin-token"


def test_description_is_valid_openapi() -> None:
    doc = yaml.safe_load(OPENAPI.read_text())
    validate(doc)  # raises with the offending path when invalid
    assert doc["openapi"].startswith("3.1")
    operations = {
        (m.upper(), p) for p, item in doc["paths"].items() for m in item if m != "parameters"
    }
    for expected in [
        ("POST", "/api/builds"),
        ("GET", "/api/builds"),
        ("GET", "/api/builds/{build_id}"),
        ("DELETE", "/api/builds/{build_id}"),
        ("GET", "/api/builds/{build_id}/events"),
        ("GET", "/api/builds/{build_id}/log"),
        ("GET", "/api/images/{provider}/{spec}"),
        ("GET", "/build/{provider}/{spec}"),
    ]:
        assert expected in operations, expected


def test_examples_match_their_schemas() -> None:
    """Every example in components/examples is a valid Build (docs do not drift)."""
    from tests.api.helpers import assert_schema

    doc = yaml.safe_load(OPENAPI.read_text())
    for name, example in doc["components"]["examples"].items():
        assert_schema(example["value"], "Build"), name


def test_docs_copy_is_identical() -> None:
    assert DOCS_OPENAPI.read_bytes() == OPENAPI.read_bytes(), (
        "docs/openapi.yaml differs from binderbuild/openapi.yaml: "
        "cp binderbuild/openapi.yaml docs/openapi.yaml"
    )


@pytest.fixture
def fuzz_service(start_service, docker_client, git_server):
    """binderbuild with only the git provider and only repositories of the
    loopback git server allowed.

    Generated specs are refused (403) before any lookup, so no generated
    request makes the service contact any other address.
    """
    allowed = re.escape(f"git%3A%2F%2F127.0.0.1%3A{git_server.git_port}%2F")
    extra = "\n".join(
        [
            "c.BinderBuild.repo_providers = {'git': 'binderbuild.providers.git.GitRepoProvider'}",
            f"c.GitRepoProvider.allowed_specs = [{'^' + allowed!r}]",
            f"c.BinderBuild.api_tokens = {{{TOKEN!r}: 'tests'}}",
        ]
    )
    return start_service(service_config(None, extra))


CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
        "unsupported_method",
        "allow_header_conformance",
    ]
)

CONFIG = """
[generation]
max-examples = 25
# Values must be sendable at all; the service's answers to odd text are
# what is under test.
codec = "ascii"
allow-x00 = false

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "409", "415", "422", "429"]
"""


def schemathesis(url: str, workdir: Path, config: str, *args: str) -> tuple[str, list[dict]]:
    st = Path(sys.executable).with_name("st")
    if not st.exists():
        pytest.fail(
            f"schemathesis is not installed in {st.parent}: pip install schemathesis", pytrace=False
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "schemathesis.toml").write_text(config)
    report = workdir / "report.ndjson"
    proc = subprocess.run(
        [
            str(st),
            f"--config-file={workdir / 'schemathesis.toml'}",
            "run",
            f"{url}/api/openapi.json",
            f"--checks={CHECKS}",
            "--seed=20261121",
            # One worker: hypothesis' lambda descriptions hit a CPython 3.11
            # ast.parse race when two threads generate at once.
            "--workers=1",
            "--request-timeout=20",
            "--max-failures=20",
            "--report=ndjson",
            f"--report-ndjson-path={report}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=workdir,  # its example database (.schemathesis/) stays out of the tree
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-10000:]
    events = [json.loads(line) for line in report.read_text().splitlines() if line.strip()]
    return output, events


@pytest.mark.docker
def test_schemathesis_finds_no_server_errors_or_deviations(
    fuzz_service, make_fixture_repo, tmp_path: Path
) -> None:
    """Examples, then coverage and fuzzing with valid and malformed data,
    against the real process.

    Malformed requests must be answered 4xx (negative_data_rejection), never
    5xx (not_a_server_error), and every answer must match the description.
    """
    try:
        output, events = schemathesis(
            fuzz_service.url,
            tmp_path / "all",
            CONFIG,
            "--phases=examples,coverage,fuzzing",
            "--mode=all",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- service log ---\n{fuzz_service.log()[-3000:]}") from None
    assert "11 selected" in output or "selected" in output, output[-2000:]
    assert len(events) > 20, "schemathesis sent (almost) nothing"

    # Then with a real build, so status, events and log answer 200 and
    # their real bodies are checked against the description too.
    repo = make_fixture_repo()
    build = call(
        f"{fuzz_service.url}/api/builds", "POST", {"provider": "git", "spec": repo.spec()}
    ).json()
    wait_for(
        "the build to finish",
        lambda: call(f"{fuzz_service.url}/api/builds/{build['id']}").json()["state"] != "running",
        timeout=180,
    )
    real = (
        CONFIG
        + f"""
[[operations]]
include-path-regex = '^/api/builds/[{{]build_id[}}]'
parameters = {{ "path.build_id" = "{build["id"]}" }}
"""
    )
    output, _ = schemathesis(
        fuzz_service.url,
        tmp_path / "real",
        real,
        "--phases=examples,fuzzing",
        "--mode=positive",
        "--include-path-regex=^/api/builds/",
    )
    status = call(f"{fuzz_service.url}/api/builds/{build['id']}").json()
    assert status["state"] == "succeeded", status  # still there, unharmed (no auth sent)
