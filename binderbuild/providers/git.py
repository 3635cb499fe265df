"""Plain Git: ``git/{url-encoded clone URL}/{ref}``, resolved with ``git ls-remote``.

The URL and ref come from strangers, and both end up on a git command line,
so they are checked before any process starts:
- the URL's scheme must be in ``allowed_schemes`` (no ``ext::``, ``fd::``,
  ``file://``, ssh); nothing may start with ``-``; no control characters;
- the host must not resolve to an internal address (``netsafety``);
- git runs with ``--`` before positional arguments, with every transport but
  the allowed ones disabled (``protocol.allow=never``), redirects off and no
  credential prompts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from urllib.parse import quote, urlsplit

from traitlets import Float, List, Unicode

from binderbuild.errors import ProviderError, RefNotFound, SpecError, UnsafeURL
from binderbuild.http import redact_url
from binderbuild.models import ResolvedRef
from binderbuild.netsafety import check_url
from binderbuild.providers.base import (
    ParsedSpec,
    RepoProvider,
    reject_control_chars,
    split_encoded_spec,
)

SHA1_OR_SHA256 = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# Characters git forbids in ref names (git check-ref-format), plus whitespace.
_BAD_REF = re.compile(r"(\.\.|@\{|[\s~^:?*\[\\]|^/|/$|\.lock$|//|^\.)")


def validate_ref(ref: str) -> None:
    reject_control_chars(ref, "ref")
    if not ref:
        raise SpecError("The ref is empty.")
    if ref.startswith("-"):
        raise SpecError(f"Invalid ref {ref!r}: a ref cannot start with '-'.")
    if len(ref) > 255 or _BAD_REF.search(ref):
        raise SpecError(f"Invalid ref {ref!r}: not a valid git branch, tag or commit name.")


def validate_clone_url(url: str, allowed_schemes: list[str]) -> None:
    reject_control_chars(url, "repository URL")
    if not url:
        raise SpecError("The repository URL is empty.")
    if url.startswith("-"):
        raise UnsafeURL("Invalid repository URL: it cannot start with '-'.")
    if "::" in url.split("/", 1)[0]:
        # git's "<transport>::<address>" syntax (ext::, fd::) runs commands.
        raise UnsafeURL("Invalid repository URL: git remote-helper syntax is not allowed.")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if not scheme or "://" not in url:
        raise UnsafeURL(
            f"Invalid repository URL {redact_url(url)!r}: use a full URL with one of the "
            f"schemes {', '.join(allowed_schemes)}."
        )
    if scheme not in allowed_schemes:
        raise UnsafeURL(
            f"Repository URL scheme {scheme!r} is not allowed "
            f"(allowed: {', '.join(allowed_schemes)})."
        )
    if not parts.hostname:
        raise SpecError(f"Invalid repository URL {redact_url(url)!r}: no host.")
    if parts.username is not None or parts.password is not None:
        # Credentials in a launch URL would end up in image names, the
        # registry, logs and every shared link. Operators configure private
        # access with RepoProvider.git_credentials instead.
        raise SpecError(
            f"Repository URL {redact_url(url)!r} must not contain credentials; "
            "private repositories are configured by the operator (git_credentials)."
        )


class GitRepoProvider(RepoProvider):
    provider_id = "git"
    display_name = "Git repository"
    content_provider = "git"
    repo_label = "Git repository URL"
    repo_placeholder = "https://example.org/owner/repo.git"
    repo_regex = r"^(https?|git)://[^\s]+$"
    spec_regex = r"[^/]+/.+"
    url_encoded = True

    allowed_schemes = List(
        Unicode(),
        default_value=["http", "https", "git"],
        config=True,
        help="URL schemes accepted for git repositories. ssh, file and git's "
        "ext::/fd:: transports are never accepted.",
    )
    ls_remote_timeout = Float(
        30.0, config=True, help="Seconds before `git ls-remote` is killed and resolution fails."
    )
    git_executable = Unicode("git", config=True, help="The git binary used for `ls-remote`.")

    def parse(self, spec: str) -> ParsedSpec:
        url, ref = split_encoded_spec(
            spec,
            "A git spec is {url-encoded repository URL}/{ref}, e.g. "
            "https%3A%2F%2Fexample.org%2Frepo.git/HEAD",
        )
        ref = ref or self.default_ref
        validate_clone_url(url, [s.lower() for s in self.allowed_schemes])
        validate_ref(ref)
        return ParsedSpec(repo=url, ref=ref)

    async def resolve(self, spec: str) -> ResolvedRef:
        parsed = self.parse(spec)
        url, ref = parsed.repo, parsed.ref
        immutable = bool(SHA1_OR_SHA256.match(ref))
        await check_url(url, self.allowed_internal_networks)
        resolved = ref if immutable else await self.ls_remote(url, ref)
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref=ref,
            resolved_ref=resolved,
            resolved_spec=f"{quote(url, safe='')}/{resolved}",
            repo_url=url,
            ref_url=url,
            slug_source=url,
            content_provider=self.content_provider,
            immutable_ref=immutable,
        )

    def _git_argv(self, url: str, ref: str) -> list[str]:
        argv = [self.git_executable, "-c", "protocol.allow=never"]
        for scheme in self.allowed_schemes:
            argv += ["-c", f"protocol.{scheme.lower()}.allow=always"]
        argv += ["-c", "http.followRedirects=false", "-c", "credential.helper="]
        argv += ["ls-remote", "--", url]
        # Patterns match the tail of ref names; exact matches are picked below.
        argv += ["HEAD"] if ref == "HEAD" else [ref, f"{ref}^{{}}"]
        return argv

    async def ls_remote(self, url: str, ref: str) -> str:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/nonexistent",
            "LANG": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_PROTOCOL_FROM_USER": "0",
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._git_argv(url, ref),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise ProviderError(f"Could not run git: {exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.ls_remote_timeout)
        except TimeoutError:
            # Kill the whole process group: git leaves the talking to its
            # transport helper (git-remote-http), which would otherwise live on
            # with the connection and our stderr pipe, and proc.wait() (which
            # waits for the pipes to close) would never return.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise ProviderError(
                f"Timed out after {self.ls_remote_timeout:g}s asking {redact_url(url)} for refs."
            ) from None
        if proc.returncode != 0:
            raise self._translate_failure(url, err.decode(errors="replace"))
        sha = pick_ref(out.decode(errors="replace"), ref)
        if sha is None:
            raise RefNotFound(f"Could not resolve ref {ref!r} in {redact_url(url)}: no such ref.")
        return sha

    @staticmethod
    def _translate_failure(url: str, stderr: str) -> Exception:
        safe_url = redact_url(url)
        lines = [line for line in stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else "git ls-remote failed"
        reason = reason.replace(url, safe_url)[:300]
        lowered = stderr.lower()
        if any(
            s in lowered
            for s in ("not found", "does not appear to be a git repository", "no such repository")
        ):
            return RefNotFound(f"Repository {safe_url} not found ({reason}).")
        return ProviderError(f"Could not reach repository {safe_url}: {reason}")


def pick_ref(ls_remote_output: str, ref: str) -> str | None:
    """Choose the commit for ``ref`` from ls-remote output, preferring exact names.

    Order: the ref given in full (peeled first: the commit an annotated tag
    points at, not the tag object); branch; peeled tag; tag.
    """
    found: dict[str, str] = {}
    for line in ls_remote_output.splitlines():
        sha, _, name = line.partition("\t")
        if sha and name:
            found[name.strip()] = sha.strip()
    for candidate in (
        f"{ref}^{{}}",
        ref,
        f"refs/heads/{ref}",
        f"refs/tags/{ref}^{{}}",
        f"refs/tags/{ref}",
    ):
        if candidate in found:
            return found[candidate]
    return None
