"""The demo repository scripts/run.sh serves from a loopback git server.

A Dockerfile repository (repo2docker's Dockerfile buildpack) FROM the local
notebook base image, so it builds on a machine that can pull nothing, in
seconds, with no network during the build.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

BASE_IMAGE = "binderbuild/notebook-base:bookworm"

DOCKERFILE = f"""\
# A Binder repository: repo2docker builds this Dockerfile.
FROM {BASE_IMAGE}
ARG NB_USER=jovyan
ARG NB_UID=1000
ENV USER=${{NB_USER}} HOME=/home/${{NB_USER}}
USER root
COPY --chown=1000:1000 . ${{HOME}}
USER ${{NB_UID}}
WORKDIR ${{HOME}}
"""

README = """\
# binderbuild demo

This repository was built into an image by binderbuild and is running on the
JupyterHub that `scripts/run.sh` started. Open `hello.ipynb`.
"""


def _notebook() -> str:
    cells = [
        {
            "cell_type": "markdown",
            "metadata": {},
            "source": ["# Hello from binderbuild\n", "Run the cell below."],
        },
        {
            "cell_type": "code",
            "execution_count": None,
            "metadata": {},
            "outputs": [],
            "source": [
                "import os, platform\n",
                "print(platform.python_version(), os.environ.get('BINDER_REPO_URL'))",
            ],
        },
    ]
    return json.dumps(
        {
            "cells": cells,
            "metadata": {
                "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        },
        indent=1,
    )


def make_demo_repo(root: Path, name: str = "demo") -> Path:
    """Create the bare repository ``root/NAME.git`` (branch main) and return its path."""
    bare = Path(root) / f"{name}.git"
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "binderbuild",
        "GIT_AUTHOR_EMAIL": "demo@binderbuild.invalid",
        "GIT_COMMITTER_NAME": "binderbuild",
        "GIT_COMMITTER_EMAIL": "demo@binderbuild.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }

    def git(*args: str, cwd: Path | None = None) -> None:
        subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)

    bare.parent.mkdir(parents=True, exist_ok=True)
    git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
    with tempfile.TemporaryDirectory(prefix="binderbuild-demo-") as tmp:
        work = Path(tmp)
        git("init", "--quiet", "--initial-branch=main", str(work))
        (work / "Dockerfile").write_text(DOCKERFILE)
        (work / "README.md").write_text(README)
        (work / "hello.ipynb").write_text(_notebook())
        git("add", "--all", cwd=work)
        git("commit", "--quiet", "-m", "binderbuild demo", cwd=work)
        git("push", "--quiet", str(bare), "HEAD:refs/heads/main", cwd=work)
    return bare
