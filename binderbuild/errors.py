"""The one exception tree of binderbuild.

Foreign errors (git, HTTP, Docker, Kubernetes, JupyterHub) are translated into
these where the foreign library is called. Every class declares two stable
facts about itself: ``status``, the HTTP status the edge answers with
(``binderbuild.handlers.base`` maps errors to HTTP in one place), and ``code``,
the identifier clients read in JSON (``failure.type`` of the builds API, the
launch event log's ``error.type``). Codes are frozen: they were the class
names when the API first shipped, and renaming a class must not change them.
Both are class attributes, so the most specific class that sets one wins and
no table order can matter.

::

    BinderBuildError
    ├── RequestError                 the client asked for something wrong
    │   ├── UnknownProvider
    │   ├── SpecError                malformed spec / ref / URL
    │   │   └── UnsafeURL            hostile or internal address
    │   ├── RefNotFound
    │   ├── Forbidden                banned spec, banned network, no permission
    │   ├── NotFound                 unknown build id, image not present
    │   ├── Conflict                 the resource is not in a state for this
    │   ├── UnsupportedMediaType     request body not JSON
    │   └── RateLimited              too many requests (carries retry_after)
    ├── UpstreamError                a dependency failed or is down
    │   ├── TransportError           no HTTP answer (refused, timeout, TLS)
    │   ├── ProviderError            GitHub/GitLab/Zenodo/git server
    │   │   └── ProviderRateLimited
    │   ├── RegistryError
    │   ├── BuildBackendError        Docker engine / Kubernetes API
    │   │   └── ResourceExpired      a Kubernetes list/watch must relist (410)
    │   └── HubError
    ├── BuildFailed                  the repository did not build
    │   ├── BuildTimeout
    │   └── BuildCancelled
    ├── LaunchFailed                 the hub could not start the server
    │   ├── LaunchTimeout
    │   └── QuotaExceeded
    └── ConfigError                  the operator's configuration is wrong
"""

from __future__ import annotations

from typing import ClassVar


class BinderBuildError(Exception):
    """Base of every error binderbuild raises on purpose.

    ``message`` is safe to show to the client: it never carries secrets.
    """

    # HTTP status at the edge; subclasses override (see error_status).
    status: ClassVar[int] = 500

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # A code is never inherited: a subclass that names none gets its own
        # class name, and keeps it (declare ``code`` before renaming a class).
        if "code" not in cls.__dict__:
            cls.code = cls.__name__

    code: ClassVar[str] = "BinderBuildError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def response_headers(self) -> dict[str, str]:
        """Headers the HTTP answer to this error must carry (none by default)."""
        return {}


class RequestError(BinderBuildError):
    status = 400


class UnknownProvider(RequestError):
    status = 404


class SpecError(RequestError):
    status = 400


class UnsafeURL(SpecError):
    status = 400


class RefNotFound(RequestError):
    status = 404


class Forbidden(RequestError):
    status = 403


class NotFound(RequestError):
    status = 404


class RateLimited(RequestError):
    status = 429

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """``headers``: the limit's state (``X-RateLimit-*``), sent with the 429."""
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    def response_headers(self) -> dict[str, str]:
        return dict(self.headers)


class UpstreamError(BinderBuildError):
    status = 500


class ProviderError(UpstreamError):
    status = 502


class ProviderRateLimited(ProviderError):
    status = 503

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryError(UpstreamError):
    status = 503


class BuildBackendError(UpstreamError):
    status = 503


class HubError(UpstreamError):
    status = 503


class BuildFailed(BinderBuildError):
    status = 500


class BuildTimeout(BuildFailed):
    status = 500


class BuildCancelled(BuildFailed):
    status = 409


class LaunchFailed(BinderBuildError):
    status = 500


class LaunchTimeout(LaunchFailed):
    status = 504


class QuotaExceeded(LaunchFailed):
    status = 429


class ConfigError(BinderBuildError):
    status = 500


class Conflict(RequestError):
    """The resource exists but is not in a state that allows the request
    (cancelling a finished build)."""

    status = 409


class UnsupportedMediaType(RequestError):
    status = 415


class TransportError(UpstreamError):
    """An HTTP request got no answer: refused, reset, timed out, TLS failed.
    The message names the URL with credentials removed."""

    status = 500


class ResourceExpired(BuildBackendError):
    """A Kubernetes list or watch answered 410 Gone: relist from scratch."""


def error_status(exc: BaseException) -> int:
    """The HTTP status of any exception: its class's, else 500."""
    return exc.status if isinstance(exc, BinderBuildError) else 500


def error_code(exc: BaseException) -> str:
    """The stable code clients see for an exception."""
    return exc.code if isinstance(exc, BinderBuildError) else "InternalError"


def retry_after(exc: BaseException) -> float | None:
    """Seconds a client should wait before retrying, when the error says."""
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) else None
