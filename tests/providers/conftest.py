"""Fixtures for provider tests.

Hosted APIs are replayed from ``tests/fixtures/recordings`` through
``ReplayHttpClient`` (the service's HTTP client with ``send`` answering from
the recording). Host names do not resolve here, so providers get a fake DNS
resolver: every name is a public address unless a test maps it elsewhere.
``async def`` tests run in a fresh event loop each.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from binderbuild.netsafety import IPAddress
from binderbuild.providers.recording import ReplayHttpClient

# The shared assertions there should explain their failures like a test's own.
pytest.register_assert_rewrite("tests.providers.helpers")

RECORDINGS = Path(__file__).resolve().parent.parent / "fixtures" / "recordings"
# Any global unicast address: nothing is ever sent to it (replay only).
PUBLIC_ADDRESS = "93.184.215.14"
ASYNC_TEST_TIMEOUT = 60.0


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    params = inspect.signature(pyfuncitem.obj).parameters
    args = {name: pyfuncitem.funcargs[name] for name in params}

    async def run() -> None:
        await asyncio.wait_for(pyfuncitem.obj(**args), ASYNC_TEST_TIMEOUT)

    asyncio.run(run())
    return True


def recording(name: str) -> Path:
    return RECORDINGS / f"{name}.json"


class FakeResolver:
    """DNS for tests: ``hosts`` maps names to addresses, the rest are public."""

    def __init__(self, hosts: Mapping[str, str] | None = None) -> None:
        self.hosts = dict(hosts or {})
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int | None) -> list[IPAddress]:
        self.asked.append(host)
        try:
            return [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            pass
        return [ipaddress.ip_address(self.hosts.get(host, PUBLIC_ADDRESS))]


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver({"internal.example": "10.0.0.7", "metadata.example": "169.254.169.254"})


@pytest.fixture
def make_provider(resolver: FakeResolver) -> Callable[..., Any]:
    """``make_provider(Class, "github/ref-branch", ..., **traits)`` -> provider with a replay client.

    Must be called inside the test's event loop (the client is created there).
    """

    def make(cls: type, *recordings: str, **traits: Any) -> Any:
        client = ReplayHttpClient(*(recording(r) for r in recordings))
        networks = traits.pop("allowed_internal_networks", None)
        return cls(
            http=client,
            resolver=resolver,
            allowed_internal_networks=networks,
            log=logging.getLogger("binderbuild.tests.providers"),
            **traits,
        )

    return make
