"""``python -m binderbuild.hubconfig``: write the embedded hub's jupyterhub_config.py."""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path

from binderbuild.hubconfig import HOST_NETWORK, HubConfig, write
from binderbuild.hubconfig.auth import LoginConfigError, add_login_arguments, login_from_args
from binderbuild.hubconfig.network import (
    DEFAULT_SERVER_NETWORK,
    ServerNetworkError,
    ensure_server_network,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m binderbuild.hubconfig",
        description="Write a jupyterhub_config.py for binderbuild's single-machine hub.",
    )
    parser.add_argument("--out", type=Path, required=True, help="config file to write")
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="hub database, secrets, pid files"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        required=True,
        help="binderbuild's service token; created (random) when missing",
    )
    parser.add_argument(
        "--image-prefix",
        action="append",
        required=True,
        dest="prefixes",
        help="allowed image prefix (repeatable): binderbuild's image_prefix",
    )
    parser.add_argument("--proxy-command", default="configurable-http-proxy")
    parser.add_argument("--ip", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="public (proxy) port")
    parser.add_argument("--hub-port", type=int, default=8081)
    parser.add_argument("--base-url", default="/", help="the hub's path prefix, e.g. /jupyter/")
    parser.add_argument(
        "--public-url",
        default="",
        help="the URL browsers use for the hub (with --base-url), e.g. "
        "https://binder.example.org/jupyter/; default http://ip:port/",
    )
    parser.add_argument("--proxy-api-port", type=int, default=8001)
    parser.add_argument(
        "--docker-network",
        default=DEFAULT_SERVER_NETWORK,
        help="Docker network of the servers: created (internal bridge) when missing. "
        "'host' shares the host's network with every server: unsafe for public use",
    )
    parser.add_argument(
        "--hub-ip",
        default="",
        help="where the hub's API listens and servers reach it; default: the "
        "network's gateway (with 'host': --ip)",
    )
    parser.add_argument("--mem-limit", default="2G", help="memory limit of each server")
    parser.add_argument("--cpu-limit", type=float, default=1.0, help="CPUs of each server")
    parser.add_argument("--pids-limit", type=int, default=512, help="processes of each server")
    parser.add_argument(
        "--storage-limit",
        default="",
        help="signed-in servers: size of each server's storage, e.g. 1G (empty: no limit; "
        "docs/persistent-servers.md)",
    )
    parser.add_argument(
        "--registry-credentials-file",
        default="",
        help="file with user:password for the engine's pulls of server images",
    )
    parser.add_argument(
        "--pull-policy", default="ifnotpresent", choices=["ifnotpresent", "always", "never", "skip"]
    )
    parser.add_argument("--container-prefix", default="binder")
    parser.add_argument("--cull-timeout", type=int, default=600, help="0 disables the culler")
    parser.add_argument("--cull-every", type=int, default=60)
    parser.add_argument("--auth-enabled", action="store_true")
    parser.add_argument("--service-url", default="")
    add_login_arguments(parser)
    args = parser.parse_args(argv)
    try:
        login = login_from_args(args)
    except LoginConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    token_file: Path = args.token_file
    if token_file.exists():
        token = token_file.read_text().strip()
    else:
        token = secrets.token_hex(32)
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.touch(mode=0o600)
        token_file.write_text(token + "\n")
    if len(token) < 32:
        print(f"{token_file}: the service token is too short", file=sys.stderr)
        return 2
    hub_ip = args.hub_ip
    if not hub_ip and args.docker_network != HOST_NETWORK:
        try:
            hub_ip = ensure_server_network(args.docker_network)
        except ServerNetworkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    cfg = HubConfig(
        data_dir=args.data_dir,
        api_token=token,
        image_prefixes=args.prefixes,
        proxy_command=args.proxy_command,
        ip=args.ip,
        port=args.port,
        base_url="/" + args.base_url.strip("/") + "/" if args.base_url.strip("/") else "/",
        external_url=args.public_url,
        hub_port=args.hub_port,
        proxy_api_port=args.proxy_api_port,
        docker_network=args.docker_network,
        hub_ip=hub_ip,
        mem_limit=args.mem_limit,
        cpu_limit=args.cpu_limit,
        pids_limit=args.pids_limit,
        storage_limit=args.storage_limit,
        registry_credentials_file=args.registry_credentials_file,
        pull_policy=args.pull_policy,
        container_prefix=args.container_prefix,
        cull_timeout=args.cull_timeout,
        cull_every=args.cull_every,
        auth_enabled=args.auth_enabled or login is not None,
        login=login,
        service_url=args.service_url,
    )
    try:
        write(cfg, args.out)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
