"""The Docker network Binder servers run on, on one machine.

Spawned servers belong on a network of their own, not the host's: on the
host network a server reaches every service the host binds to loopback (the
registry, binderbuild, the proxy's API) and, with root and ``NET_RAW``, can
sniff their traffic. ``ensure_server_network`` creates an *internal* bridge
network (``docker network create --internal``) when it does not exist yet and
returns the host's address on it, the bridge's gateway: the hub listens
there so that servers reach its API, and the proxy reaches each server at
its container address. Services bound to 127.0.0.1 on the host are out of
the servers' reach.

``python -m binderbuild.hubconfig.network [NAME]`` does the same from a shell
and prints the gateway address (scripts/run.sh uses it).
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any

from binderbuild.hubconfig import DEFAULT_SERVER_NETWORK

__all__ = ["DEFAULT_SERVER_NETWORK", "ServerNetworkError", "ensure_server_network"]
# Label on networks binderbuild created, so an operator can tell them apart.
NETWORK_LABEL = "org.binderbuild.role"


class ServerNetworkError(RuntimeError):
    pass


def _gateway(attrs: dict[str, Any]) -> str:
    for pool in (attrs.get("IPAM") or {}).get("Config") or []:
        gateway = pool.get("Gateway") or ""
        try:
            address = ipaddress.ip_address(gateway.split("/")[0])
        except ValueError:
            continue
        if address.version == 4:
            return str(address)
    raise ServerNetworkError(
        f"Docker network {attrs.get('Name')!r} has no IPv4 gateway: servers on it "
        "could not reach the hub. Use a bridge network (docker network create --internal NAME)."
    )


def ensure_server_network(name: str = DEFAULT_SERVER_NETWORK, client: Any = None) -> str:
    """Create the internal bridge network ``name`` if missing; return its gateway.

    Idempotent, and safe when several processes call it at once (a creation
    that loses the race uses the network the other one made). A network of
    that name that an operator made is used as it is, as long as it is a
    bridge network.
    """
    if name in ("host", "none", "bridge", ""):
        raise ServerNetworkError(f"{name!r} is not a network binderbuild can isolate servers on")
    import docker
    import docker.errors

    own_client = client is None
    if client is None:
        client = docker.from_env(timeout=30)
    try:
        try:
            attrs = client.api.inspect_network(name)
        except docker.errors.NotFound:
            try:
                client.api.create_network(
                    name,
                    driver="bridge",
                    internal=True,
                    check_duplicate=True,
                    labels={NETWORK_LABEL: "servers"},
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: made by someone else meanwhile
                    raise ServerNetworkError(
                        f"cannot create Docker network {name!r}: {exc}"
                    ) from exc
            attrs = client.api.inspect_network(name)
        if attrs.get("Driver") != "bridge":
            raise ServerNetworkError(
                f"Docker network {name!r} uses the {attrs.get('Driver')!r} driver; "
                "servers need a bridge network the hub and proxy can reach"
            )
        return _gateway(attrs)
    finally:
        if own_client:
            client.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python -m binderbuild.hubconfig.network [NAME]", file=sys.stderr)
        return 2
    try:
        print(ensure_server_network(args[0] if args else DEFAULT_SERVER_NETWORK))
    except ServerNetworkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
