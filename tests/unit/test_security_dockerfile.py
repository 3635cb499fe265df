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
