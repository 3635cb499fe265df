"""The one place where errors become HTTP statuses."""

from __future__ import annotations

from binderbuild import errors as e

_STATUS: list[tuple[type[BaseException], int]] = [
    (e.UnknownProvider, 404),
    (e.RefNotFound, 404),
    (e.NotFound, 404),
    (e.UnsafeURL, 400),
    (e.SpecError, 400),
    (e.Forbidden, 403),
    (e.RateLimited, 429),
    (e.QuotaExceeded, 429),
    (e.ProviderRateLimited, 503),
    (e.ProviderError, 502),
    (e.RegistryError, 503),
    (e.BuildBackendError, 503),
    (e.HubError, 503),
    (e.LaunchTimeout, 504),
    (e.BuildCancelled, 409),
    (e.BuildTimeout, 500),
    (e.BuildFailed, 500),
    (e.LaunchFailed, 500),
    (e.RequestError, 400),
]


def http_status(exc: BaseException) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def retry_after(exc: BaseException) -> float | None:
    return getattr(exc, "retry_after", None)
