"""Plain Git: ``git/{url-encoded clone URL}/{ref}``, resolved with ``git ls-remote``.

The URL and ref come from strangers, and both end up on a git command line,
so they are checked before any process starts:
- the URL's scheme must be in ``allowed_schemes`` (no ``ext::``, ``fd::``,
  ``file://``, ssh); nothing may start with ``-``; no control characters;
- the host must not resolve to an internal address (``netsafety``), and git
  connects to the address that was checked, never resolving the name itself
  (``http.curloptResolve`` for http(s), the address literal for ``git://``):
  a DNS answer that changes after the check (rebinding) cannot send git
  inside;
- git runs with ``--`` before positional arguments, with every transport but
  the allowed ones disabled (``protocol.allow=never``), redirects off and no
  credential prompts.

A host that is refused, does not resolve, refuses the connection or does not
answer gets one and the same answer, "Could not reach the repository at URL."
(a ``ProviderError``): what differs would tell a stranger which internal names
exist and which ports are open. The log keeps the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import re
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from traitlets import Float, List, Unicode

from binderbuild.builders.leftovers import deathsig_preexec
from binderbuild.errors import ProviderError, RefNotFound, SpecError, UnsafeURL
from binderbuild.http import redact_url
from binderbuild.models import ResolvedRef
from binderbuild.netsafety import IPAddress, address_allowed, resolve_host
from binderbuild.providers.base import (
    ParsedSpec,
    RepoProvider,
    reject_control_chars,
    split_encoded_spec,
)

log = logging.getLogger("binderbuild.providers.git")

# (host, port) -> addresses; netsafety.resolve_host, or a test's own.
Resolver = Callable[[str, int | None], Awaitable[list[IPAddress]]]

_DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418}
# http.curloptResolve (CURLOPT_RESOLVE from git config) exists since git 2.37.
_MIN_GIT_FOR_PINNING = (2, 37)

SHA1_OR_SHA256 = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
# Characters git forbids in ref names (git check-ref-format), plus whitespace.
_BAD_REF = re.compile(r"(\.\.|@\{|[\s~^:?*\[\\]|^/|/$|\.lock$|//|^\.)")


_HOST_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_.])?")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
    if not _HOST_NAME.fullmatch(parts.hostname) and not _is_address(parts.hostname):
        # git's curl would convert (IDN) or decode (%) such a name and resolve
        # the result itself, past the address pinned for the checked name.
        raise SpecError(
            f"Invalid repository URL {redact_url(url)!r}: the host name may contain only "
            "letters, digits, '-', '_' and '.' (write international names in punycode)."
        )
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
    git_executable = Unicode(
        "git",
        config=True,
        help="The git binary used for `ls-remote` (2.37 or later: it must accept "
        "http.curloptResolve, which pins the checked address).",
    )

    def __init__(self, *, resolver: Resolver | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.resolver: Resolver = resolver or resolve_host
        self._git_version: tuple[int, int] | None = None

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
        addresses = await self.checked_addresses(url)
        resolved = ref if immutable else await self.ls_remote(url, ref, addresses)
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

    def _unreachable(self, url: str, reason: str) -> ProviderError:
        """The one answer for refused, unknown, closed and silent hosts; the reason is logged."""
        safe_url = redact_url(url)
        log.warning(
            "Could not reach the repository at %s: %s", safe_url, reason.replace(url, safe_url)
        )
        return ProviderError(f"Could not reach the repository at {safe_url}.")

    async def checked_addresses(self, url: str) -> list[IPAddress]:
        """Resolve the URL's host once; every address must be allowed.

        These addresses, and only these, are what git connects to.
        """
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
        except ValueError:
            raise SpecError(f"Repository URL {redact_url(url)!r} has an invalid port.") from None
        try:
            addresses = list(await self.resolver(host, port))
        except (SpecError, OSError) as exc:
            raise self._unreachable(url, f"cannot resolve {host!r}: {exc}") from None
        if not addresses:
            raise self._unreachable(url, f"{host!r} has no address")
        for addr in addresses:
            if not address_allowed(addr, self.allowed_internal_networks, port):
                raise self._unreachable(
                    url,
                    f"{host} resolves to an internal address ({addr}); operators can allow "
                    "it with BinderBuild.allowed_internal_networks",
                )
        return addresses

    def _pinned(self, url: str, addresses: Sequence[IPAddress]) -> tuple[str, list[str]]:
        """The URL and ``-c`` options that make git connect to ``addresses`` only."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            ipaddress.ip_address(host)
            return url, []  # an address literal: nothing to resolve
        except ValueError:
            pass
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS[scheme]
        if scheme == "git":
            # git:// has no way to pass an address: connect to the literal.
            first = addresses[0]
            literal = f"[{first}]" if first.version == 6 else str(first)
            return urlunsplit(parts._replace(netloc=f"{literal}:{port}")), []
        listed = ",".join(f"[{a}]" if a.version == 6 else str(a) for a in addresses)
        options: list[str] = []
        # curl matches names without case; list the name with and without a
        # trailing dot so that no spelling falls back to its own resolver.
        for name in dict.fromkeys([host, host.rstrip("."), host.rstrip(".") + "."]):
            options += ["-c", f"http.curloptResolve={name}:{port}:{listed}"]
        return url, options

    async def _check_git_version(self) -> None:
        """Refuse to run a git that would ignore http.curloptResolve (and resolve by itself)."""
        if self._git_version is None:
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.git_executable,
                    "version",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 10)
            except (OSError, TimeoutError) as exc:
                raise ProviderError(f"Could not run git: {exc}") from None
            match = re.search(rb"(\d+)\.(\d+)", out)
            self._git_version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
        if self._git_version < _MIN_GIT_FOR_PINNING:
            log.error(
                "git %s.%s cannot pin addresses (http.curloptResolve needs 2.37 or later)",
                *self._git_version,
            )
            raise ProviderError(
                "This service's git is too old to fetch safely (2.37 or later is needed)."
            )

    def _git_argv(self, url: str, ref: str, pin: Sequence[str] = ()) -> list[str]:
        argv = [self.git_executable, "-c", "protocol.allow=never"]
        for scheme in self.allowed_schemes:
            argv += ["-c", f"protocol.{scheme.lower()}.allow=always"]
        argv += ["-c", "http.followRedirects=false", "-c", "credential.helper="]
        argv += list(pin)
        argv += ["ls-remote", "--", url]
        # Patterns match the tail of ref names; exact matches are picked below.
        argv += ["HEAD"] if ref == "HEAD" else [ref, f"{ref}^{{}}"]
        return argv

    async def ls_remote(
        self, url: str, ref: str, addresses: Sequence[IPAddress] | None = None
    ) -> str:
        """The commit ``ref`` names in ``url``.

        With ``addresses`` (from ``checked_addresses``) git connects to them
        and never resolves the host itself. Without, git resolves the name:
        only for callers that checked nothing because they trust the URL.
        """
        target, pin = url, list[str]()
        if addresses:
            target, pin = self._pinned(url, addresses)
            if pin:
                await self._check_git_version()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/nonexistent",
            "LANG": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_PROTOCOL_FROM_USER": "0",
            # The http(s) transport helper gives up by itself on a server that
            # sends (next to) nothing for a little longer than the resolution
            # may take: it outlives git when the service is killed (see below).
            "GIT_HTTP_LOW_SPEED_LIMIT": "1024",
            "GIT_HTTP_LOW_SPEED_TIME": str(math.ceil(self.ls_remote_timeout) + 5),
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._git_argv(target, ref, pin),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
                # git dies with the service (its own session keeps it from
                # the service's signals otherwise).
                preexec_fn=deathsig_preexec(),
            )
        except OSError as exc:
            raise ProviderError(f"Could not run git: {exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.ls_remote_timeout)
        except TimeoutError:
            await _kill_group(proc)
            raise self._unreachable(
                url, f"Timed out after {self.ls_remote_timeout:g}s asking for refs"
            ) from None
        except BaseException:
            # Cancelled (the service is stopping): the group must not live on
            # with a connection to a server that never answers.
            await _kill_group(proc)
            raise
        if proc.returncode != 0:
            stderr = err.decode(errors="replace")
            if target != url:
                # Messages name the URL git was given (the address literal).
                stderr = stderr.replace(target, url)
            raise self._translate_failure(url, stderr)
        sha = pick_ref(out.decode(errors="replace"), ref)
        if sha is None:
            raise RefNotFound(f"Could not resolve ref {ref!r} in {redact_url(url)}: no such ref.")
        return sha

    def _translate_failure(self, url: str, stderr: str) -> Exception:
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
        # Refused, reset, TLS or protocol errors: the details would tell open
        # ports from closed ones, so they go to the log only.
        return self._unreachable(url, reason)


async def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill git's whole process group and reap git. The group, not git
    alone: git leaves the talking to its transport helper (git-remote-http),
    which would otherwise live on with the connection and our stderr pipe,
    and ``proc.wait()`` (which waits for the pipes to close) would never
    return."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    await asyncio.shield(proc.wait())


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
