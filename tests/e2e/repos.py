"""Fixture repositories for the browser tests (Dockerfile repositories
built FROM the local notebook base image, so builds need no network)."""

from __future__ import annotations

from tests.realservices import dockerfile_repo_files

# Printed by the hostile repository's build: markup, terminal escapes that
# would retitle the window, clear the screen or make a link, 3,000 short
# lines and one 200,000-character line, then a failure.
HOSTILE_STEPS = [
    "RUN printf '%s\\n' '<script>window.__pwned=1</script>' '<img src=x onerror=\"window.__pwned=2\">'",
    "RUN printf '\\033[1;31mred-alert\\033[0m \\033]0;pwned-title\\007after-osc \\033[2Jafter-clear\\n'"
    " && printf '\\033]8;;https://evil.example/\\033\\\\click-me\\033]8;;\\033\\\\\\n'",
    "RUN seq 1 3000 && head -c 200000 /dev/zero | tr '\\0' x && echo && echo hostile-end && exit 3",
]

# A build step that prints a line a second for a while: time to cut the
# page's connection in the middle of it.
SLOW_STEPS = ["RUN for i in $(seq 1 15); do echo tick-$i; sleep 1; done"]


def with_steps(marker: str, steps: list[str]) -> dict[str, str]:
    """dockerfile_repo_files(marker) with ``steps`` run as root before the
    final ``USER``."""
    files = dockerfile_repo_files(marker)
    lines = files["Dockerfile"].splitlines()
    at = lines.index("USER 1000")
    files["Dockerfile"] = "\n".join(lines[:at] + steps + lines[at:]) + "\n"
    return files
