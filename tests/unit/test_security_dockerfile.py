"""Dockerfiles that would make the Docker daemon fetch URLs are refused.

``ADD <url>`` is downloaded by the daemon on the host's network, so the
build network (``none``) does not apply to it. The engine checks the
Dockerfile it is handed before calling the daemon (the real build is in
tests/integration/test_security.py).
"""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from binderbuild.builders.dockerfile_policy import DockerfilePolicyError, check_dockerfile
from binderbuild.builders.r2d_engine import _dockerfile_text

BASE = "FROM binderbuild/notebook-base:bookworm\n"

REFUSED = [
    "ADD http://169.254.169.254/latest/meta-data/ /tmp/m",
    "add https://127.0.0.1:5000/v2/_catalog /tmp/c",
    "ADD\thttp://example.org/x /tmp/x",
    "ADD --chown=1000:1000 http://10.0.0.1/secret /tmp/s",
    "ADD --checksum=sha256:00 --chmod=644 HTTP://10.0.0.1/s /tmp/s",
    'ADD ["http://10.0.0.1/secret", "/tmp/s"]',
    "ADD local.txt http://10.0.0.1/second /tmp/",
    "ADD \\\n  http://10.0.0.1/secret \\\n  /tmp/s",
    "ADD \\\n# a comment inside the continuation\n  http://10.0.0.1/secret /tmp/s",
    "ONBUILD ADD http://10.0.0.1/later /tmp/later",
    "onbuild add http://10.0.0.1/later /tmp/later",
    "ARG U=http://10.0.0.1/secret\nADD $U /tmp/s",
    "ARG U=http://10.0.0.1/secret\nADD ${U} /tmp/s",
    "ADD git@github.com:moby/buildkit.git /src",
    "ADD https://github.com/moby/buildkit.git#v0.10 /src",
    "ADD ftp://10.0.0.1/x /tmp/x",
]

ALLOWED = [
    "COPY . /home/jovyan",
    "ADD environment.yml /tmp/",
    "ADD data.tar.gz /opt/data",
    "ADD --chown=1000:1000 a.txt b.txt /home/jovyan/",
    'ADD ["a file.txt", "/tmp/"]',
    "ADD notes.txt $HOME/",
    "RUN curl -fsSLo /tmp/x https://example.org/x || true",
    "# ADD http://10.0.0.1/secret /tmp/s  (only a comment)",
    'LABEL url="http://example.org/"',
    "ENV ADD=http://example.org/",
]


@pytest.mark.parametrize("line", REFUSED)
def test_remote_add_is_refused(line):
    with pytest.raises(DockerfilePolicyError) as info:
        check_dockerfile(BASE + line + "\n")
    assert "RUN" in str(info.value)  # says what to do instead


@pytest.mark.parametrize("line", ALLOWED)
def test_ordinary_dockerfiles_pass(line):
    check_dockerfile(BASE + line + "\n")


def test_escape_directive_backtick_continuation():
    text = "# escape=`\n" + BASE + "ADD `\n  http://10.0.0.1/secret `\n  /tmp/s\n"
    with pytest.raises(DockerfilePolicyError):
        check_dockerfile(text)
    # With backtick escaping a trailing backslash is no continuation.
    check_dockerfile("# escape=`\n" + BASE + "COPY a \\\nRUN echo ok\n")


def _context_tar(dockerfile: str) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_dockerfile_is_read_from_a_context_tar_and_the_tar_is_rewound():
    tar = _context_tar(BASE + "ADD http://10.0.0.1/x /x\n")
    text = _dockerfile_text("", "", tar, True)
    assert "ADD http://10.0.0.1/x" in text
    assert tar.tell() == 0


def test_dockerfile_is_read_from_the_repository(tmp_path):
    (tmp_path / "binder").mkdir()
    (tmp_path / "binder" / "Dockerfile").write_text(BASE + "ADD http://10.0.0.1/x /x\n")
    with pytest.raises(DockerfilePolicyError):
        check_dockerfile(_dockerfile_text(str(tmp_path), "binder/Dockerfile", None, False))


def test_dockerfile_symlink_out_of_the_repository_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("ADD http://10.0.0.1/x /x\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(outside, repo / "Dockerfile")
    with pytest.raises(DockerfilePolicyError, match="outside the repository"):
        _dockerfile_text(str(repo), "Dockerfile", None, False)


# ---------------------------------------------------------------------------
# Reading Dockerfiles the way Docker does (issue 11, finding 4).
#
# Each entry is (what the attempt does, Dockerfile). The daemon reads every
# one of these as an ADD of a URL or as an image on an internal registry, so
# every one must be refused before the daemon sees it.

LOOPBACK_REGISTRY = "127.0.0.1:5999"


def _fake_resolver(table: dict[str, list[str]]):
    """A resolver that answers from ``table`` and never touches the network."""
    import ipaddress
    import socket

    def resolve(host: str) -> list:
        if host.lower() in table:
            return [ipaddress.ip_address(a) for a in table[host.lower()]]
        try:  # numeric forms only (0x7f.1, 2130706433): no DNS query
            infos = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
        except OSError:
            raise OSError(f"unknown host {host}") from None
        return [ipaddress.ip_address(str(i[4][0])) for i in infos]

    return resolve


RESOLVER = _fake_resolver(
    {
        "quay.io": ["34.225.41.113"],
        "ghcr.io": ["140.82.113.33"],
        "registry.internal.example": ["10.20.0.5"],
        "rebind.example": ["93.184.216.34", "127.0.0.1"],
        "localhost": ["127.0.0.1", "::1"],
    }
)

BYPASSES = [
    ("continuation splitting the keyword", BASE + "AD\\\nD http://10.0.0.1/secret /tmp/s\n"),
    (
        "continuation splitting the URL",
        BASE + "ADD http:\\\n//10.0.0.1/secret /tmp/s\n",
    ),
    (
        "comment and blank lines inside the continuation",
        BASE + "AD\\\n# comment\n\n   # indented comment\nD http://10.0.0.1/s /tmp/s\n",
    ),
    (
        "escape directive after a UTF-8 BOM",
        "\ufeff# escape=`\n" + BASE + "ADD http:`\n//10.0.0.1/secret /tmp/s\n",
    ),
    (
        "escape directive with spaces, after a syntax directive",
        "# syntax=docker/dockerfile:1\n#  ESCAPE = `\n" + BASE + "AD`\nD http://10.0.0.1/s /s\n",
    ),
    (
        "CRLF line ends",
        BASE.replace("\n", "\r\n") + "AD\\\r\nD http://10.0.0.1/secret /tmp/s\r\n",
    ),
    (
        "heredoc whose terminator ends in the escape character",
        BASE + "RUN <<'X\\'\necho hi\nX\\\nADD http://10.0.0.1/secret /tmp/s\n",
    ),
    ("heredoc source next to a URL", BASE + "ADD <<EOF http://10.0.0.1/s /tmp/\nhello\nEOF\n"),
    (
        "ADD in a heredoc body, which the classic builder reads as an instruction",
        BASE + "RUN <<EOF\nADD http://10.0.0.1/secret /tmp/s\nEOF\n",
    ),
    ("JSON form", BASE + 'ADD ["http://10.0.0.1/secret", "/tmp/s"]\n'),
    ("JSON form with escaped slashes", BASE + 'ADD ["http:\\/\\/10.0.0.1/s", "/tmp/s"]\n'),
    ("quotes inside the URL", BASE + 'ADD http:"//"10.0.0.1/secret /tmp/s\n'),
    ("escapes inside the URL", BASE + "ADD http:\\/\\/10.0.0.1/secret /tmp/s\n"),
    ("lowercase", BASE + "add http://10.0.0.1/secret /tmp/s\n"),
    ("mixed case", BASE + "aDd http://10.0.0.1/secret /tmp/s\n"),
    ("ONBUILD", BASE + "ONBUILD ADD http://10.0.0.1/later /tmp/later\n"),
    ("FROM a loopback registry", f"FROM {LOOPBACK_REGISTRY}/x\n"),
    ("FROM a loopback registry, IPv6", "FROM [::1]:5000/x\n"),
    ("FROM localhost", "FROM localhost/x\n"),
    ("FROM LOCALHOST with a port", "FROM LOCALHOST:5000/x:latest\n"),
    ("FROM a 6to4 address embedding loopback", "FROM [2002:7f00:1::1]:5000/x\n"),
    ("FROM an IPv4-mapped loopback", "FROM [::ffff:127.0.0.1]:5000/x\n"),
    ("FROM the metadata service", "FROM 169.254.169.254/x\n"),
    ("FROM a short numeric loopback", "FROM 0x7f.1:5000/x\n"),
    ("FROM a decimal loopback", "FROM 2130706433:5000/x\n"),
    ("FROM a name resolving inside", "FROM registry.internal.example/team/x:1\n"),
    ("FROM a name with one internal address", "FROM rebind.example/x\n"),
    ("FROM a name that does not resolve", "FROM nowhere.invalid/x\n"),
    ("FROM with --platform and AS", f"FROM --platform=linux/amd64 {LOOPBACK_REGISTRY}/x AS b\n"),
    ("FROM in quotes", f'FROM "{LOOPBACK_REGISTRY}/x"\n'),
    ("FROM through a build argument", "ARG REG=127.0.0.1:5999\nFROM ${REG}/x\n"),
    ("FROM through a default value", "FROM ${NOPE:-127.0.0.1:5999}/x\n"),
    ("FROM split by a continuation", "FROM 127.0.0.1:\\\n5999/x\n"),
    ("lowercase from", f"from {LOOPBACK_REGISTRY}/x\n"),
    ("later stage FROM", BASE + f"FROM {LOOPBACK_REGISTRY}/x AS second\n"),
    ("COPY --from a loopback registry", BASE + "COPY --from=localhost:5000/x /a /b\n"),
    ("COPY --from with quotes in the flag name", BASE + f'COPY --fr"om"={LOOPBACK_REGISTRY}/x /a /b\n'),
    ("COPY --from with an escape in the flag", BASE + "COPY --from=127.0.0.1\\:5999/x /a /b\n"),
    ("COPY --from with a quoted value", BASE + f'COPY --from="{LOOPBACK_REGISTRY}/x" /a /b\n'),
    ("COPY --from as a separate flag word", BASE + f"COPY --chown=1:1 --from={LOOPBACK_REGISTRY}/x /a /b\n"),
    ("COPY --from with a variable", BASE + "ARG R\nCOPY --from=$R/x /a /b\n"),
    ("ADD --from", BASE + f"ADD --from={LOOPBACK_REGISTRY}/x /a /b\n"),
    ("ONBUILD COPY --from", BASE + f"ONBUILD COPY --from={LOOPBACK_REGISTRY}/x /a /b\n"),
    (
        "RUN --mount from an image",
        BASE + f"RUN --mount=type=bind,from={LOOPBACK_REGISTRY}/x,target=/m true\n",
    ),
    (
        "RUN --mount from an image, quoted CSV",
        BASE + f'RUN --mount="type=bind,source=/,from={LOOPBACK_REGISTRY}/x" true\n',
    ),
    ("syntax directive naming an internal frontend", f"# syntax={LOOPBACK_REGISTRY}/frontend\n" + BASE),
    ("syntax directive naming another frontend", "# syntax=example.org/frontend:1\n" + BASE),
]


@pytest.mark.parametrize(("what", "dockerfile"), BYPASSES, ids=[b[0] for b in BYPASSES])
def test_bypass_attempts_are_refused(what, dockerfile):
    with pytest.raises(DockerfilePolicyError):
        check_dockerfile(dockerfile, resolver=RESOLVER)


LEGITIMATE = [
    ("the test fixture", BASE + "ARG NB_USER=jovyan\nUSER root\nCOPY --chown=1000:1000 . ${HOME}\nUSER 1000\n"),
    (
        "multi-stage with COPY --from a stage",
        "FROM binderbuild/base:bookworm AS Builder\nRUN make\n"
        + BASE
        + "COPY --from=builder /out /opt/out\nCOPY --from=0 /a /b\n",
    ),
    ("a stage used as a base", "FROM binderbuild/base:bookworm AS base\nFROM base\nRUN true\n"),
    ("Docker Hub spelled out", "FROM docker.io/library/python:3.11-slim\n"),
    ("Docker Hub by short name", "FROM python:3.11\n"),
    ("Docker Hub with a digest", "FROM python@sha256:" + "a" * 64 + "\n"),
    ("a public registry", "FROM quay.io/jupyter/base-notebook:2024-01-01\n"),
    ("a build argument in the tag", "ARG PY=3.11\nFROM python:${PY}-slim\n"),
    ("scratch", "FROM scratch\nCOPY a /a\n"),
    ("syntax directive", "# syntax=docker/dockerfile:1.7\n" + BASE),
    ("cache mount", BASE + "RUN --mount=type=cache,target=/root/.cache pip install x\n"),
    ("bind mount from a stage", "FROM python AS deps\n" + BASE + "RUN --mount=from=deps,target=/d true\n"),
    ("heredoc", BASE + "RUN <<EOF\napt-get update\nEOF\nCOPY <<EOF /etc/motd\nhello\nEOF\n"),
    ("local ADD", BASE + "ADD data.tar.gz /opt/\n"),
    ("URL in a RUN step", BASE + "RUN curl -fsSLo /tmp/x https://example.org/x\n"),
    ("escape directive", "# escape=`\n" + BASE + "RUN echo a `\n  b\n"),
    ("continuation", BASE + "RUN apt-get update && \\\n    apt-get install -y git\n"),
]


@pytest.mark.parametrize(("what", "dockerfile"), LEGITIMATE, ids=[a[0] for a in LEGITIMATE])
def test_legitimate_dockerfiles_are_accepted(what, dockerfile):
    check_dockerfile(dockerfile, resolver=RESOLVER)


def test_refusal_names_the_registry_and_what_to_do():
    with pytest.raises(DockerfilePolicyError) as info:
        check_dockerfile(f"FROM {LOOPBACK_REGISTRY}/secret/image\n", resolver=RESOLVER)
    message = str(info.value)
    assert LOOPBACK_REGISTRY in message and "internal" in message
    assert "public registr" in message


def test_the_operator_may_allow_its_own_internal_registry():
    from binderbuild.builders.dockerfile_policy import RegistryPolicy

    policy = RegistryPolicy(allowed_internal=("127.0.0.1:5999", "localhost"))
    check_dockerfile(f"FROM {LOOPBACK_REGISTRY}/binderbuild/base\n", registries=policy, resolver=RESOLVER)
    check_dockerfile("FROM localhost:7000/x\n", registries=policy, resolver=RESOLVER)
    with pytest.raises(DockerfilePolicyError):  # another port of the same host
        check_dockerfile("FROM 127.0.0.1:6000/x\n", registries=policy, resolver=RESOLVER)


def test_the_operator_allow_list_excludes_other_registries():
    from binderbuild.builders.dockerfile_policy import RegistryPolicy

    policy = RegistryPolicy(allowed=("quay.io", "docker.io"))
    check_dockerfile("FROM quay.io/jupyter/base-notebook\n", registries=policy, resolver=RESOLVER)
    check_dockerfile("FROM python:3.11\nFROM index.docker.io/library/python\n", registries=policy, resolver=RESOLVER)
    with pytest.raises(DockerfilePolicyError, match="allowed registries"):
        check_dockerfile("FROM ghcr.io/x/y\n", registries=policy, resolver=RESOLVER)
    only_quay = RegistryPolicy(allowed=("quay.io",))
    with pytest.raises(DockerfilePolicyError, match="allowed registries"):
        check_dockerfile("FROM python:3.11\n", registries=only_quay, resolver=RESOLVER)


def test_registry_policy_travels_through_the_environment():
    from binderbuild.builders.dockerfile_policy import RegistryPolicy

    policy = RegistryPolicy(allowed=("quay.io",), allowed_internal=("127.0.0.1:5000",))
    assert RegistryPolicy.from_env(policy.to_env()) == policy
    assert RegistryPolicy.from_env({}) == RegistryPolicy()
