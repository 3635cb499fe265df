"""Frozen values passed between the pipeline's stages."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """The pipeline's only input."""

    provider_id: str
    spec: str
    build_only: bool = False
    client_ip: str = ""
    user: str | None = None  # JupyterHub user name when authenticated
    force_rebuild: bool = False
    launch_host: str = ""  # public URL of this service, e.g. https://mybinder.org/
    profile: str = ""  # resource profile the user picked (?profile=), checked by the spawner


@dataclass(frozen=True, slots=True)
class ResolvedRef:
    """Everything later stages need from a provider, with the ref made immutable."""

    provider_id: str
    spec: str  # as requested
    unresolved_ref: str
    resolved_ref: str  # commit SHA / record version
    resolved_spec: str  # spec with the ref replaced by resolved_ref
    repo_url: str  # what repo2docker fetches
    ref_url: str  # browse URL of the resolved ref
    slug_source: str  # stable identity of the repository, for image names
    content_provider: str = "git"  # repo2docker content provider that fetches it
    immutable_ref: bool = False  # the requested ref itself was immutable


@dataclass(frozen=True, slots=True)
class ImageSpec:
    repository: str  # registry repository, with registry host when one is used
    tag: str
    build_name: str  # dedup key, DNS-safe, <= 63 chars

    @property
    def name(self) -> str:
        return f"{self.repository}:{self.tag}"


@dataclass(frozen=True, slots=True)
class BuildJob:
    image: ImageSpec
    ref: ResolvedRef
    push: bool
    extra_env: tuple[tuple[str, str], ...] = field(default=())  # secrets for the fetch only


@dataclass(frozen=True, slots=True)
class LaunchRequest:
    image: str
    ref: ResolvedRef
    request_path: str  # v2/{provider}/{spec}
    persistent_request_path: str  # v2/{provider}/{resolved_spec}
    launch_host: str
    user: str | None = None
    server_name: str = ""
    # A resource profile the user picked (the spawner's profiles, user_options
    # "profile"; docs/persistent-servers.md). Empty: the default.
    profile: str = ""


@dataclass(frozen=True, slots=True)
class LaunchResult:
    url: str
    token: str
    user: str
    server_name: str = ""
    # Handed out from a warm pool (binderbuild.warmpool) rather than started
    # for this launch.
    warm: bool = False
