"""Record hosted-API answers, and replay them through the service's HTTP client.

GitHub, GitLab, Zenodo and the other hosted APIs cannot be reached from the
machines the tests run on. Provider tests therefore replay *recordings*:
JSON files listing request -> response, replayed by ``ReplayHttpClient``, a
``binderbuild.http.HttpClient`` whose ``send`` answers from the file. The
provider code under test is exactly the code the service runs.

File format (one file per scenario, ``tests/fixtures/recordings/<provider>/``)::

    {
      "comment": "what this scenario shows",
      "interactions": [
        {
          "request": {"method": "GET", "url": "https://...",
                      "headers": {"If-None-Match": "\\"abc\\""}},
          "response": {"status": 200, "headers": {"ETag": "\\"abc\\""},
                       "json": {...}}
        }
      ]
    }

- ``request.headers`` is optional; when present, each listed header must be
  sent with that value for the interaction to match. The most specific match
  wins, so a conditional request gets the 304 and a plain one the 200.
- The body is ``json`` (any JSON value), ``body`` (text) or ``body_base64``.
- ``"error": "timeout"`` (or any text) instead of ``response`` makes the
  client raise ``TransportError``, as for a real timeout.
- ``"synthetic": true`` marks hand-made answers (outages, rate limits,
  timeouts): ``refresh`` keeps them as they are.
- A header value ``"${now+600}"`` is replayed as the Unix time 600 s from
  now, so rate-limit reset times stay in the future.

Refreshing from a machine with internet access::

    python -m binderbuild.providers.recording record gh jupyterhub/repo2docker/HEAD \\
        tests/fixtures/recordings/github/new-scenario.json --twice
    python -m binderbuild.providers.recording refresh tests/fixtures/recordings/github/*.json

``record`` runs the provider's real ``resolve`` through a recording client
(tokens from the usual environment variables are used, never written);
``refresh`` re-sends every non-synthetic request of existing files.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader
from traitlets.utils.importstring import import_item

from binderbuild.errors import TransportError
from binderbuild.http import HttpClient, HttpRequestSpec, HttpResponse

# Request headers worth keeping in a recording: they change the answer.
_MATCH_HEADERS = ("if-none-match", "if-modified-since", "accept")
# Response headers never written to a file (session state, noise).
_DROP_RESPONSE_HEADERS = frozenset({"set-cookie", "content-length", "content-encoding", "date"})


class ReplayMiss(AssertionError):
    """The code asked for something the recording does not contain."""


def load_interactions(path: str | Path) -> list[dict[str, Any]]:
    data = json.loads(Path(path).read_text())
    interactions = data["interactions"] if isinstance(data, dict) else data
    if not isinstance(interactions, list):
        raise ValueError(f"{path}: 'interactions' must be a list")
    return interactions


_NOW_PLUS = re.compile(r"^\$\{now([+-]\d+)\}$")


def _expand(value: str) -> str:
    match = _NOW_PLUS.match(value)
    return str(int(time.time()) + int(match.group(1))) if match else value


def response_from(recorded: Mapping[str, Any], url: str) -> HttpResponse:
    if "json" in recorded:
        body = json.dumps(recorded["json"]).encode()
    elif "body_base64" in recorded:
        body = base64.b64decode(recorded["body_base64"])
    else:
        body = str(recorded.get("body", "")).encode()
    return HttpResponse(
        status=int(recorded["status"]),
        headers={k: _expand(str(v)) for k, v in recorded.get("headers", {}).items()},
        body=body,
        url=url,
    )


def _headers_lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


class ReplayHttpClient(HttpClient):
    """Answers requests from recordings; never touches the network.

    ``requests`` lists every request sent, so tests can check headers (an
    ``If-None-Match`` on revalidation, no token sent to a foreign host).
    """

    def __init__(self, *sources: str | Path | Iterable[Mapping[str, Any]]) -> None:
        super().__init__(user_agent="binderbuild-tests")
        self.interactions: list[Mapping[str, Any]] = []
        for source in sources:
            if isinstance(source, str | Path):
                self.interactions.extend(load_interactions(source))
            else:
                self.interactions.extend(source)
        self.requests: list[HttpRequestSpec] = []

    def _match(self, spec: HttpRequestSpec) -> Mapping[str, Any]:
        sent = _headers_lower(spec.headers)
        best: Mapping[str, Any] | None = None
        best_score = -1
        for item in self.interactions:
            req = item["request"]
            if req.get("method", "GET").upper() != spec.method.upper() or req["url"] != spec.url:
                continue
            wanted = _headers_lower(req.get("headers", {}))
            if any(sent.get(k) != v for k, v in wanted.items()):
                continue
            if len(wanted) > best_score:
                best, best_score = item, len(wanted)
        if best is None:
            known = "\n  ".join(
                f"{i['request'].get('method', 'GET')} {i['request']['url']}"
                for i in self.interactions
            )
            raise ReplayMiss(
                f"No recorded answer for {spec.method} {spec.url}; recorded:\n  {known}"
            )
        return best

    async def send(self, spec: HttpRequestSpec) -> HttpResponse:
        self.requests.append(spec)
        item = self._match(spec)
        if "error" in item:
            raise TransportError(f"{spec.url}: {item['error']}")
        return response_from(item["response"], spec.url)


def interaction_from(spec: HttpRequestSpec, resp: HttpResponse) -> dict[str, Any]:
    """A recording entry for one real exchange (credentials never included)."""
    request: dict[str, Any] = {"method": spec.method, "url": spec.url}
    kept = {k: v for k, v in spec.headers.items() if k.lower() in _MATCH_HEADERS}
    if kept:
        request["headers"] = kept
    response: dict[str, Any] = {
        "status": resp.status,
        "headers": {
            k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS
        },
    }
    content_type = resp.header("content-type")
    try:
        if "json" in content_type and resp.body:
            response["json"] = json.loads(resp.body)
        else:
            response["body"] = resp.body.decode()
    except (ValueError, UnicodeDecodeError):
        response.pop("json", None)
        response["body_base64"] = base64.b64encode(resp.body).decode()
    return {"request": request, "response": response}


class RecordingHttpClient(HttpClient):
    """The real client, remembering every exchange for a recording file."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recorded: list[dict[str, Any]] = []

    async def send(self, spec: HttpRequestSpec) -> HttpResponse:
        try:
            resp = await super().send(spec)
        except TransportError as exc:
            self.recorded.append(
                {"request": {"method": spec.method, "url": spec.url}, "error": exc.message}
            )
            raise
        self.recorded.append(interaction_from(spec, resp))
        return resp


def write_recording(path: Path, interactions: list[dict[str, Any]], comment: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"comment": comment, "interactions": interactions}
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


async def record(
    provider_id: str, spec: str, out: Path, *, twice: bool = False, config: Config | None = None
) -> str:
    """Resolve ``spec`` for real and write every exchange to ``out``; returns the outcome."""
    from binderbuild.errors import BinderBuildError
    from binderbuild.providers import DEFAULT_PROVIDERS

    client = RecordingHttpClient(user_agent="binderbuild-recorder")
    klass = import_item(DEFAULT_PROVIDERS[provider_id])
    provider = klass(
        http=client, config=config or Config(), log=logging.getLogger("binderbuild.recording")
    )
    outcome = ""
    try:
        for _ in range(2 if twice else 1):
            ref = await provider.resolve(spec)
            outcome = f"resolved to {ref.resolved_ref}"
    except BinderBuildError as exc:
        outcome = f"{type(exc).__name__}: {exc.message}"
    finally:
        client.close()
    write_recording(out, client.recorded, f"{provider_id}/{spec}: {outcome}")
    return outcome


async def refresh(paths: list[Path]) -> None:
    """Re-send the non-synthetic requests of recording files and store the new answers."""
    client = HttpClient(user_agent="binderbuild-recorder")
    try:
        for path in paths:
            data = json.loads(path.read_text())
            fresh: list[dict[str, Any]] = []
            # A conditional request must carry the ETag the refreshed
            # answer before it returned, or the recorded 304 turns into a 200.
            etags: dict[str, str] = {}
            for item in data["interactions"]:
                if item.get("synthetic"):
                    fresh.append(item)
                    continue
                req = dict(item["request"])
                headers = dict(req.get("headers", {}))
                for name in list(headers):
                    if name.lower() == "if-none-match" and req["url"] in etags:
                        headers[name] = etags[req["url"]]
                if headers:
                    req["headers"] = headers
                spec = HttpRequestSpec(
                    req.get("method", "GET"),
                    req["url"],
                    {"User-Agent": client.user_agent, **req.get("headers", {})},
                    follow_redirects=False,
                )
                try:
                    resp = await client.send(spec)
                    new = interaction_from(spec, resp)
                    new["request"] = req
                    if resp.status == 200 and resp.header("etag"):
                        etags[req["url"]] = resp.header("etag")
                except TransportError as exc:
                    new = {"request": req, "error": exc.message}
                fresh.append(new)
            data["interactions"] = fresh
            path.write_text(json.dumps(data, indent=2) + "\n")
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m binderbuild.providers.recording",
        description="Record or refresh provider API recordings (needs internet access).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="resolve a spec for real and save every exchange")
    rec.add_argument("provider", help="provider prefix, e.g. gh, gl, zenodo")
    rec.add_argument("spec", help="the spec, as in /v2/<provider>/<spec>")
    rec.add_argument("out", type=Path, help="JSON file to write")
    rec.add_argument(
        "--twice", action="store_true", help="resolve twice (records ETag revalidation)"
    )
    rec.add_argument(
        "--config",
        type=Path,
        help="binderbuild config file (Python) for the provider, e.g. an Enterprise API URL",
    )
    ref = sub.add_parser("refresh", help="re-send the recorded requests of existing files")
    ref.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.command == "record":
        config = None
        if args.config:
            config = PyFileConfigLoader(args.config.name, str(args.config.parent)).load_config()
        outcome = asyncio.run(
            record(args.provider, args.spec, args.out, twice=args.twice, config=config)
        )
        print(f"{args.out}: {outcome}")
    else:
        asyncio.run(refresh(args.files))
        print(f"refreshed {len(args.files)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
