"""What a repository's Dockerfile may not ask the Docker daemon to do.

Build steps (``RUN``) run in containers on the build network (``none`` by
default), but two things in a Dockerfile make the *daemon itself* open
connections, from the host's own network, before any container exists:

- ``ADD <url>`` (and ``ONBUILD ADD``, which fires later in an image built
  ``FROM`` this one): the daemon downloads the URL. A stranger could copy
  the cloud metadata service, the registry's API or any loopback service
  into an image and read it by launching that image.
- image references: ``FROM``, ``COPY --from=``/``ADD --from=``,
  ``RUN --mount=from=`` and the ``# syntax=`` frontend. The daemon pulls
  them from the registry host the reference names (``host[:port]/path``),
  and echoes the registry's answer into the public build log.

Refused, before the daemon is called:

- ``ADD`` sources with a URL scheme (anything ``://``), a ``git@`` address or
  a ``$`` (variables are expanded by the daemon, after this check);
- image references whose registry host is an internal address: a literal
  internal IP (IPv6 wrappings of internal IPv4 addresses included, see
  ``netsafety``), ``localhost``, or a name that does not resolve to public
  addresses only. Exceptions: ``RegistryPolicy.allowed_internal``
  (``DockerBuilder.allowed_internal_registries``);
- image references on registries outside ``RegistryPolicy.allowed``
  (``DockerBuilder.allowed_registries``) when the operator sets that list;
- ``--from`` values with variables (they cannot be checked here), and
  ``# syntax=`` frontends other than Docker's own ``docker/dockerfile``
  (a custom frontend interprets the Dockerfile itself, past this check).

Images without a registry host (``python:3.11``, the operator's local
``binderbuild/base:bookworm``) are Docker Hub's or the daemon's own, and stage
names (``FROM x AS builder`` ... ``COPY --from=builder``) and stage numbers are
not image references.

**Reading the file as Docker does.** The policy is only as good as its
agreement with the daemon's parser, and Docker's parser has changed over the
years (the classic builder of dockerd 20.10 and BuildKit's frontends differ
in parser directives, line continuations and heredocs). The file is therefore
read in every one of those ways (``_DIALECTS``) and refused if any reading
finds something refused. What each reading follows:

- the UTF-8 byte order mark before the first line; lines end at ``\\n`` only
  (a trailing ``\\r`` is dropped);
- parser directives at the top: ``# escape=`` (and ``# syntax=``); the old
  parser stops at the first line that is not an escape directive, the new
  one reads ``# name = value`` lines until the first non-directive;
- line continuations: the escape character at the end of a line (followed
  by spaces or tabs only) is removed and the next line appended **with
  nothing in between**; comment lines and blank lines inside a
  continuation are dropped; the old parser treats any trailing escape as a
  continuation, the new one not an escaped one;
- heredocs (``<<EOF``, ``<<-EOF``, quoted names) in ``RUN``, ``COPY``, ``ADD``
  and their ``ONBUILD`` forms: their bodies are data in BuildKit and
  instructions to the classic builder, so both are read;
- instruction keywords in any case; flags before the arguments with
  quotes and backslash escapes (``"--from=x"``, ``--from="x"``); the JSON
  form and the shell form of arguments; quote and escape removal and
  variable expansion (``$X``, ``${X}``, ``${X:-default}``...) of ``FROM`` with
  the ``ARG``s declared before the first ``FROM``.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import re
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product

from binderbuild.netsafety import IPAddress, is_internal

__all__ = [
    "ENV_ALLOWED_INTERNAL_REGISTRIES",
    "ENV_ALLOWED_REGISTRIES",
    "DockerfilePolicyError",
    "RegistryPolicy",
    "check_dockerfile",
    "image_registry_host",
    "instructions",
    "system_resolver",
]

ENV_ALLOWED_REGISTRIES = "BINDERBUILD_ALLOWED_REGISTRIES"
ENV_ALLOWED_INTERNAL_REGISTRIES = "BINDERBUILD_ALLOWED_INTERNAL_REGISTRIES"

# host -> addresses; raises OSError when the name does not resolve.
SyncResolver = Callable[[str], Sequence[IPAddress]]

_MAX_QUOTED = 200
# Distinct registry hosts one Dockerfile may name (each may cost a DNS query).
_MAX_REGISTRIES = 20
_BOM = "\ufeff"
# Go's strings.TrimSpace / unicode.IsSpace (what Docker strips) vs the
# whitespace that separates an instruction's keyword and words.
_WORD_SPLIT = re.compile(r"[\t\v\f\r ]+")
_OLD_ESCAPE_DIRECTIVE = re.compile(r"^#[ \t]*escape[ \t]*=[ \t]*(.).*$")
_NEW_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_OLD_SYNTAX_DIRECTIVE = re.compile(r"^#\s*syntax\s*=\s*(.+?)\s*$", re.IGNORECASE)
_HEREDOC_WORD = re.compile(r"^(\d*)<<(-?)([^<]*)$")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_]+")
# What Docker accepts as a stage name (never a registry host: no "/" or ":").
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_.-]*")
_QUOTES_AND_ESCAPES = re.compile(r"[\"'\\`]")
_DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
# The only frontends (``# syntax=``) allowed: Docker's own.
_FRONTENDS = {"docker/dockerfile", "docker/dockerfile-upstream"}


class DockerfilePolicyError(ValueError):
    """The Dockerfile asks for something this service does not allow."""


def _normalize_registry(entry: str) -> str:
    """``https://Quay.io/v2/`` -> ``quay.io``; Docker Hub's names -> ``docker.io``."""
    host = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", entry.strip())
    host = host.split("/", 1)[0].lower()
    return "docker.io" if host in _DOCKER_HUB else host


def _split_host_port(registry: str) -> tuple[str, str]:
    """``[::1]:5000`` -> (``::1``, ``5000``); ``quay.io`` -> (``quay.io``, "")."""
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        return host, rest.removeprefix(":")
    if registry.count(":") > 1:
        return registry, ""  # an unbracketed IPv6 address: no port to split
    host, _, port = registry.partition(":")
    return host, port


@dataclass(frozen=True)
class RegistryPolicy:
    """Which registries a Dockerfile's image references may name.

    ``allowed``: registry hosts (``quay.io``, ``ghcr.io``, ``docker.io`` for
    Docker Hub and names without a registry host); empty means every public
    registry. ``allowed_internal``: registries that may be internal addresses
    (``127.0.0.1:5000``, ``registry.internal``); an entry without a port allows
    every port of that host.
    """

    allowed: tuple[str, ...] = ()
    allowed_internal: tuple[str, ...] = ()

    def to_env(self) -> dict[str, str]:
        """Environment variables that carry this policy to the build process."""
        return {
            ENV_ALLOWED_REGISTRIES: json.dumps(list(self.allowed)),
            ENV_ALLOWED_INTERNAL_REGISTRIES: json.dumps(list(self.allowed_internal)),
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RegistryPolicy:
        """The policy ``to_env`` wrote; unset variables give the default policy."""

        def read(name: str) -> tuple[str, ...]:
            raw = environ.get(name, "").strip()
            if not raw:
                return ()
            try:
                value = json.loads(raw)
            except ValueError:
                value = None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DockerfilePolicyError(f"{name} must be a JSON list of registry hosts")
            return tuple(value)

        return cls(read(ENV_ALLOWED_REGISTRIES), read(ENV_ALLOWED_INTERNAL_REGISTRIES))

    def _matches(self, entries: tuple[str, ...], registry: str) -> bool:
        host, port = _split_host_port(registry)
        for entry in entries:
            e_host, e_port = _split_host_port(_normalize_registry(entry))
            if e_host == host and (not e_port or e_port == port):
                return True
        return False

    def allows(self, registry: str) -> bool:
        return not self.allowed or self._matches(self.allowed, registry)

    def allows_internal(self, registry: str) -> bool:
        return self._matches(self.allowed_internal, registry)


def system_resolver(host: str) -> list[IPAddress]:
    """Every address the system's resolver gives for ``host``."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def image_registry_host(reference: str) -> str | None:
    """The registry host ``reference`` names, or None for Docker Hub / local names.

    Docker's reference grammar: the part before the first ``/`` is a registry
    host when it contains ``.`` or ``:``, is ``localhost``, or has upper-case
    letters (newer Docker); otherwise the image is on Docker Hub. Docker
    Hub's own names give ``docker.io``.
    """
    name = reference.split("@", 1)[0]
    first, slash, _ = name.partition("/")
    if not slash or not first:
        return None
    if "." in first or ":" in first or first == "localhost" or first != first.lower():
        return _normalize_registry(first)
    return None


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Dialect:
    """One way a Docker version reads Dockerfiles (see the module docstring)."""

    new_directives: bool  # BuildKit's "# name = value" parser (vs dockerd 20.10's)
    escaped_escape_continues: bool  # "\\\\" at the end of a line is a continuation
    heredocs: bool


_DIALECTS = [_Dialect(*flags) for flags in product((False, True), repeat=3)]


@dataclass
class _Instruction:
    keyword: str  # lower case
    flags: list[str]  # "--name=value" words, quotes and escapes removed
    rest: str  # the arguments after the flags
    original: str  # for messages


@dataclass
class _Parsed:
    escape: str = "\\"
    syntax: list[str] = field(default_factory=list)
    instructions: list[_Instruction] = field(default_factory=list)


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _trim_continuation(line: str, escape: str, dialect: _Dialect) -> tuple[str, bool]:
    """(line without its continuation, whether it continues)."""
    body = line.rstrip(" \t")
    if not body.endswith(escape):
        return line, False
    body = body[:-1]
    if not dialect.escaped_escape_continues and body.endswith(escape):
        return line, False  # an escaped escape character, not a continuation
    return body, True


def _directive(line: str, dialect: _Dialect, parsed: _Parsed) -> bool:
    """Apply ``line`` as a parser directive; False when directives have ended."""
    if dialect.new_directives:
        match = _NEW_DIRECTIVE.match(line)
        if not match:
            return False
        name, value = match.group(1).lower(), match.group(2)
        if name == "escape" and value in ("\\", "`"):
            parsed.escape = value
        elif name == "syntax":
            parsed.syntax.append(value)
        return True
    match = _OLD_ESCAPE_DIRECTIVE.match(line.lower())
    if match:
        if match.group(1) in ("\\", "`"):
            parsed.escape = match.group(1)
        return True
    syntax = _OLD_SYNTAX_DIRECTIVE.match(line)
    if syntax:
        # dockerd 20.10 ends its directives here, but BuildKit's frontend
        # detection still reads the line.
        parsed.syntax.append(syntax.group(1))
    return False


def _extract_flags(args: str) -> tuple[list[str], str]:
    """Docker's extractBuilderFlags: leading ``--flag`` words, then the rest."""
    flags: list[str] = []
    pos, n = 0, len(args)
    while True:
        while pos < n and args[pos].isspace():
            pos += 1
        if not args.startswith("--", pos):
            return flags, args[pos:]
        word, quote = "", ""
        while pos < n:
            ch = args[pos]
            if not quote and ch.isspace():
                break
            pos += 1
            if quote and ch == quote:
                quote = ""
            elif not quote and ch in "'\"":
                quote = ch
            elif ch == "\\":
                if pos < n:
                    word += args[pos]
                    pos += 1
            else:
                word += ch
        if word == "--":
            return flags, args[pos:].lstrip()
        flags.append(word)


def _split_instruction(line: str) -> _Instruction | None:
    parts = _WORD_SPLIT.split(line.strip(), maxsplit=1)
    if not parts or not parts[0]:
        return None
    flags, rest = _extract_flags(parts[1]) if len(parts) > 1 else ([], "")
    return _Instruction(parts[0].lower(), flags, rest.strip(), line.strip())


def _heredoc_keyword(instruction: _Instruction) -> str:
    if instruction.keyword == "onbuild":
        sub = _split_instruction(instruction.rest)
        return sub.keyword if sub else ""
    return instruction.keyword


def _raw_words(line: str) -> list[str]:
    """Whitespace-separated words, quotes kept, quoted whitespace kept in the word."""
    words, word, quote, i = [], "", "", 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and quote != "'" and i + 1 < len(line):
            word += line[i : i + 2]
            i += 2
            continue
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch.isspace():
            if word:
                words.append(word)
            word = ""
            i += 1
            continue
        word += ch
        i += 1
    if word:
        words.append(word)
    return words


class _Unsupported(ValueError):
    """A word this reader cannot expand the way Docker would."""


class _Words:
    """Docker's shell-word processing: quotes, escapes, ``$`` expansion."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str) -> None:
        self.text, self.env, self.escape, self.pos = text, env, escape, 0

    def word(self, stop: str = "") -> str:
        out = ""
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if stop and ch == stop:
                return out
            self.pos += 1
            if ch == self.escape:
                if self.pos < len(self.text):
                    out += self.text[self.pos]
                    self.pos += 1
            elif ch == "'":
                end = self.text.find("'", self.pos)
                if end < 0:
                    raise _Unsupported("unterminated quote")
                out += self.text[self.pos : end]
                self.pos = end + 1
            elif ch == '"':
                out += self._double_quoted()
            elif ch == "$":
                out += self._dollar()
            elif ch.isspace() and not stop:
                raise _Unsupported("more than one word")
            else:
                out += ch
        if stop:
            raise _Unsupported(f"missing {stop!r}")
        return out

    def _double_quoted(self) -> str:
        out = ""
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == '"':
                return out
            if (
                ch == self.escape
                and self.pos < len(self.text)
                and self.text[self.pos] in ('"', "$", self.escape)
            ):
                out += self.text[self.pos]
                self.pos += 1
            elif ch == "$":
                out += self._dollar()
            else:
                out += ch
        raise _Unsupported("unterminated quote")

    def _dollar(self) -> str:
        if self.text.startswith("{", self.pos):
            self.pos += 1
            match = _NAME_CHARS.match(self.text, self.pos)
            if not match:
                raise _Unsupported("variable syntax")
            name, self.pos = match.group(), match.end()
            value = self.env.get(name)
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return value or ""
            for op in (":-", ":+", "-", "+"):
                if self.text.startswith(op, self.pos):
                    self.pos += len(op)
                    alternative = self.word(stop="}")
                    self.pos += 1
                    is_set = bool(value) if op.startswith(":") else value is not None
                    if op.endswith("-"):
                        return (value or "") if is_set else alternative
                    return alternative if is_set else ""
            raise _Unsupported("variable syntax")
        match = _NAME_CHARS.match(self.text, self.pos)
        if not match:
            return "$"
        self.pos = match.end()
        return self.env.get(match.group()) or ""


def _expand(word: str, env: Mapping[str, str], escape: str) -> str:
    return _Words(word, env, escape).word()


def _parse(text: str, dialect: _Dialect) -> _Parsed:
    parsed = _Parsed()
    lines = text.removeprefix(_BOM).split("\n")
    lines = [line.rstrip("\r") for line in lines]
    directives = True
    i = 0
    while i < len(lines):
        line = lines[i].lstrip()
        i += 1
        if directives:
            directives = _directive(line, dialect, parsed)
        if not line or line.startswith("#"):
            continue
        body, more = _trim_continuation(line, parsed.escape, dialect)
        while more and i < len(lines):
            raw = lines[i]
            i += 1
            if _is_comment(raw) or not raw.strip():
                continue
            piece, more = _trim_continuation(raw, parsed.escape, dialect)
            body += piece
        instruction = _split_instruction(body)
        if instruction is None:
            continue
        parsed.instructions.append(instruction)
        if (
            dialect.heredocs
            and _heredoc_keyword(instruction) in ("run", "copy", "add")
            and "<<" in body
        ):
            for name, chomp in _heredoc_names(body):
                while i < len(lines):
                    candidate = lines[i]
                    i += 1
                    if (candidate.lstrip("\t") if chomp else candidate) == name:
                        break
    return parsed


def _heredoc_names(line: str) -> list[tuple[str, bool]]:
    names = []
    for word in _raw_words(line):
        match = _HEREDOC_WORD.match(word)
        if not match or not match.group(3):
            continue
        try:
            name = _expand(match.group(3), {}, "\\")
        except _Unsupported:
            continue
        if name:
            names.append((name, match.group(2) == "-"))
    return names


def instructions(text: str) -> Iterator[str]:
    """The instructions as dockerd's classic builder reads them (joined, no comments)."""
    for instruction in _parse(text, _DIALECTS[0]).instructions:
        yield instruction.original


# ---------------------------------------------------------------- checking


def _shown(instruction: _Instruction) -> str:
    text = instruction.original
    return text if len(text) <= _MAX_QUOTED else text[:_MAX_QUOTED] + "..."


class _Checker:
    def __init__(
        self,
        registries: RegistryPolicy,
        resolver: SyncResolver,
        build_args: Mapping[str, str],
    ) -> None:
        self.registries = registries
        self.resolver = resolver
        self.build_args = dict(build_args)
        self._verdicts: dict[str, bool] = {}

    # ADD <url>

    def check_add(self, instruction: _Instruction) -> None:
        words: list[str] = _WORD_SPLIT.split(instruction.rest) if instruction.rest else []
        if instruction.rest.startswith("["):
            try:
                operands = json.loads(instruction.rest)
            except ValueError:
                operands = None
            if isinstance(operands, list) and all(isinstance(o, str) for o in operands):
                words = words[:-1] + operands  # both readings' sources
        for source in words[:-1] if len(words) > 1 else words:
            # Docker removes quotes and escapes before it looks at a source
            # ("http:"//"x" is http://x); removing them all finds every URL.
            bare = _QUOTES_AND_ESCAPES.sub("", source).lower()
            if "://" in bare or bare.lstrip("[").startswith("git@") or "$" in source:
                raise DockerfilePolicyError(
                    f"This Dockerfile is not built here: {_shown(instruction)!r} makes the Docker "
                    "daemon download a URL (or a variable that may become one) outside the "
                    "build's network isolation. Use COPY for files from the repository, and "
                    "download files in a RUN step instead (e.g. RUN curl -fsSLo /dest URL)."
                )

    # image references

    def check_image(self, instruction: _Instruction, reference: str) -> None:
        registry = image_registry_host(reference) or "docker.io"
        if not self.registries.allows(registry):
            raise DockerfilePolicyError(
                f"This Dockerfile is not built here: {_shown(instruction)!r} names the image "
                f"{reference!r} on the registry {registry!r}, which is not one of this Binder's "
                f"allowed registries ({', '.join(self.registries.allowed)})."
            )
        if registry == "docker.io" or self.registries.allows_internal(registry):
            return
        if not self._public(registry):
            raise DockerfilePolicyError(
                f"This Dockerfile is not built here: {_shown(instruction)!r} names the image "
                f"{reference!r} on the registry {registry!r}, which is an internal address or "
                "does not resolve to public ones. Images may come from public registries "
                "only: the Docker daemon would connect to that registry from inside this "
                "deployment. (Operators: DockerBuilder.allowed_internal_registries lists "
                "internal registries builds may use.)"
            )

    def _public(self, registry: str) -> bool:
        if registry not in self._verdicts:
            if len(self._verdicts) >= _MAX_REGISTRIES:
                return False
            self._verdicts[registry] = self._resolve_public(registry)
        return self._verdicts[registry]

    def _resolve_public(self, registry: str) -> bool:
        host, _port = _split_host_port(registry)
        host = host.rstrip(".")
        if not host or host == "localhost" or host.endswith(".localhost"):
            return False
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            try:
                addresses = list(self.resolver(host))
            except (OSError, UnicodeError, ValueError):
                return False  # unresolvable now; the daemon's answer may differ
        return bool(addresses) and not any(is_internal(a) for a in addresses)

    def check_from_value(self, instruction: _Instruction, value: str, stages: set[str]) -> None:
        """A ``--from=`` / ``from=`` value: a stage name, a stage number or an image."""
        if "$" in value:
            raise DockerfilePolicyError(
                f"This Dockerfile is not built here: {_shown(instruction)!r} uses a variable "
                "in --from, which cannot be checked before the build. Name a stage instead: "
                "FROM ${IMAGE} AS source, then COPY --from=source ..."
            )
        if value.lower() in stages or value.isdigit():
            return
        self.check_image(instruction, value)

    def check_syntax(self, value: str) -> None:
        reference = value.split("@", 1)[0].rsplit(":", 1)[0] if "/" in value else value
        registry = image_registry_host(reference)
        path = reference.split("/", 1)[1] if registry else reference
        if (registry or "docker.io") != "docker.io" or path.lower() not in _FRONTENDS:
            raise DockerfilePolicyError(
                f"This Dockerfile is not built here: its '# syntax={value}' directive asks for "
                "a Dockerfile frontend other than Docker's own (docker/dockerfile). Remove the "
                "line or use docker/dockerfile."
            )

    # one reading of the file

    def check(self, parsed: _Parsed) -> None:
        for value in parsed.syntax:
            self.check_syntax(value)
        stages = set()
        for instruction in parsed.instructions:
            if instruction.keyword == "from":
                words = _WORD_SPLIT.split(instruction.rest)
                if (
                    len(words) >= 3
                    and words[-2].lower() == "as"
                    and _STAGE_NAME.fullmatch(words[-1].lower())
                ):
                    stages.add(words[-1].lower())
        meta: dict[str, str] = {}
        seen_from = False
        for instruction in parsed.instructions:
            keyword = instruction.keyword
            if keyword == "arg" and not seen_from:
                self._meta_arg(instruction, meta, parsed.escape)
            if keyword == "from":
                seen_from = True
                self._check_from(instruction, meta, parsed.escape, stages)
            else:
                self._check_instruction(instruction, stages)

    def _meta_arg(self, instruction: _Instruction, meta: dict[str, str], escape: str) -> None:
        for word in _raw_words(instruction.rest):
            name, eq, default = word.partition("=")
            if name in self.build_args:
                meta[name] = self.build_args[name]
            elif eq:
                try:
                    meta[name] = _expand(default, meta, escape)
                except _Unsupported:
                    meta[name] = default
            else:
                meta[name] = ""

    def _check_from(
        self, instruction: _Instruction, meta: Mapping[str, str], escape: str, stages: set[str]
    ) -> None:
        words = _WORD_SPLIT.split(instruction.rest) if instruction.rest else []
        if not words:
            return
        # Declared ARGs as Docker expands them; and every build argument, in
        # case a Docker version lets undeclared ones through.
        for env in (meta, {**self.build_args, **meta}):
            try:
                image = _expand(words[0], env, escape)
            except _Unsupported as exc:
                raise DockerfilePolicyError(
                    f"This Dockerfile is not built here: the image in {_shown(instruction)!r} "
                    f"cannot be read before the build ({exc})."
                ) from None
            if image.lower() in stages or image == "scratch":
                continue
            self.check_image(instruction, image)

    def _check_instruction(self, instruction: _Instruction, stages: set[str]) -> None:
        keyword = instruction.keyword
        if keyword == "onbuild":
            sub = _split_instruction(instruction.rest)
            if sub is not None:
                sub.original = instruction.original
                if sub.keyword == "from":
                    return  # Docker refuses ONBUILD FROM
                self._check_instruction(sub, stages)
            return
        if keyword == "add":
            self.check_add(instruction)
        for flag in instruction.flags:
            name, _, value = flag[2:].partition("=")
            name = name.lower()
            if keyword in ("add", "copy") and name == "from":
                self.check_from_value(instruction, value, stages)
            elif keyword == "run" and name == "mount":
                for mount_key, mount_value in _mount_options(value):
                    if mount_key == "from":
                        self.check_from_value(instruction, mount_value, stages)


def _mount_options(value: str) -> list[tuple[str, str]]:
    """``type=bind,from=x,target=/m`` -> [("type", "bind"), ("from", "x"), ...]."""
    try:
        fields = next(csv.reader([value]))
    except (csv.Error, StopIteration):
        fields = value.split(",")
    options = []
    for item in fields:
        key, _, val = item.partition("=")
        options.append((key.strip().lower(), val.strip()))
    return options


def check_dockerfile(
    text: str,
    *,
    registries: RegistryPolicy | None = None,
    resolver: SyncResolver | None = None,
    build_args: Mapping[str, str] | None = None,
) -> None:
    """Raise DockerfilePolicyError when the Dockerfile may not be built.

    ``registries``: which registries image references may name (default:
    public ones). ``resolver``: resolves registry host names (default: the
    system's). ``build_args``: the build arguments the daemon will get, for
    expanding ``FROM ${ARG}``.
    """
    checker = _Checker(
        registries or RegistryPolicy(), resolver or system_resolver, build_args or {}
    )
    for dialect in _relevant_dialects(text):
        checker.check(_parse(text, dialect))


def _relevant_dialects(text: str) -> list[_Dialect]:
    """The dialects that can read ``text`` differently (all of them, at worst)."""
    dialects = _DIALECTS
    if "<<" not in text:
        dialects = [d for d in dialects if not d.heredocs]
    if not re.search(r"(\\\\|``)[ \t]*\r?$", text, re.MULTILINE):
        # No line ends with an escaped escape character.
        dialects = [d for d in dialects if d.escaped_escape_continues]
    if not text.removeprefix(_BOM).lstrip().startswith("#"):
        dialects = [d for d in dialects if d.new_directives]
    return dialects
