"""Credentials for private repositories, handed to git inside repo2docker's process.

repo2docker fetches a repository with a plain ``git clone``. To let that clone
authenticate without putting a token in the URL (URLs end up in logs, events
and ``repo_url``), the provider returns environment variables that configure
a git credential helper through git's ``GIT_CONFIG_COUNT``/``KEY_n``/``VALUE_n``
mechanism (git >= 2.31). The helper is scoped to one URL prefix, so the
credentials are only ever offered to that host, and it prints the credentials
from ``GIT_CREDENTIAL_ENV`` — the variable BinderHub's build pods use, so
existing ``git_credentials`` values keep working.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from binderbuild.errors import ConfigError

# git runs a helper starting with "!" through the shell and appends the
# operation ("get", "store", "erase"); only "get" may answer.
_HELPER = '!f() { test "$1" = get && printf \'%s\\n\' "$GIT_CREDENTIAL_ENV"; }; f'

CREDENTIAL_ENV = "GIT_CREDENTIAL_ENV"


def normalize_git_credentials(text: str) -> str:
    """Return credentials as newline-separated ``key=value`` lines.

    BinderHub's configs write ``username=x\\npassword=y`` with a *literal*
    backslash-n (its helper used ``echo -e``); both forms are accepted.
    """
    text = text.replace("\\n", "\n").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        key, sep, _ = line.partition("=")
        if not sep or not key or any(ord(c) < 32 for c in line):
            # Don't echo the line: it may hold the password.
            raise ConfigError(
                "git_credentials must be lines of key=value (e.g. username=...\\npassword=...)."
            )
    return "\n".join(lines)


def url_prefix(url: str) -> str:
    """``scheme://host[:port]`` of a URL: the scope of a credential helper."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}"


def git_credential_env(repo_url: str, credentials: str) -> dict[str, str]:
    """Environment that makes ``git clone repo_url`` authenticate with ``credentials``.

    Empty credentials give an empty mapping (public repositories).
    """
    if not credentials:
        return {}
    return {
        CREDENTIAL_ENV: normalize_git_credentials(credentials),
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": f"credential.{url_prefix(repo_url)}.helper",
        "GIT_CONFIG_VALUE_0": _HELPER,
    }


def password_of(credentials: str) -> str:
    """The ``password=`` value of git credentials, for log scrubbing."""
    for line in normalize_git_credentials(credentials).splitlines():
        key, _, value = line.partition("=")
        if key == "password":
            return value
    return ""
