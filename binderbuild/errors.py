"""The one exception tree of binderbuild.

Foreign errors (git, HTTP, Docker, Kubernetes, JupyterHub) are translated into
these where the foreign library is called. HTTP statuses are assigned only at
the edge (``binderbuild.handlers.errors``), from the class.

::

    BinderBuildError
    ├── RequestError                 the client asked for something wrong
    │   ├── UnknownProvider
    │   ├── SpecError                malformed spec / ref / URL
    │   │   └── UnsafeURL            hostile or internal address
    │   ├── RefNotFound
    │   ├── Forbidden                banned spec, banned network, no permission
    │   ├── NotFound                 unknown build id, image not present
    │   └── RateLimited              too many requests (carries retry_after)
    ├── UpstreamError                a dependency failed or is down
    │   ├── ProviderError            GitHub/GitLab/Zenodo/git server
    │   │   └── ProviderRateLimited
    │   ├── RegistryError
    │   ├── BuildBackendError        Docker engine / Kubernetes API
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


class BinderBuildError(Exception):
    """Base of every error binderbuild raises on purpose.

    ``message`` is safe to show to the client: it never carries secrets.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class RequestError(BinderBuildError):
    pass


class UnknownProvider(RequestError):
    pass


class SpecError(RequestError):
    pass


class UnsafeURL(SpecError):
    pass


class RefNotFound(RequestError):
    pass


class Forbidden(RequestError):
    pass


class NotFound(RequestError):
    pass


class RateLimited(RequestError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamError(BinderBuildError):
    pass


class ProviderError(UpstreamError):
    pass


class ProviderRateLimited(ProviderError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryError(UpstreamError):
    pass


class BuildBackendError(UpstreamError):
    pass


class HubError(UpstreamError):
    pass


class BuildFailed(BinderBuildError):
    pass


class BuildTimeout(BuildFailed):
    pass


class BuildCancelled(BuildFailed):
    pass


class LaunchFailed(BinderBuildError):
    pass


class LaunchTimeout(LaunchFailed):
    pass


class QuotaExceeded(LaunchFailed):
    pass


class ConfigError(BinderBuildError):
    pass
