"""``python -m binderbuild.hubconfig.admin``: the first admin of a hub whose
people sign in with accounts kept by the hub (``--login native``).

Creates the account (or gives it a new password when the password file is
gone) with :func:`binderbuild.hubconfig.auth.ensure_admin`, while the hub is
stopped; prints the generated password, and nothing when the file already
held one. ``scripts/run.sh --auth`` runs it before it starts the hub.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from binderbuild.hubconfig.auth import LoginConfigError, ensure_admin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m binderbuild.hubconfig.admin",
        description="Create (or reset) the first admin account of a hub that signs "
        "people in with jupyterhub-nativeauthenticator. Run it while the hub is stopped.",
    )
    parser.add_argument("--db-url", required=True, help="the hub's database (c.JupyterHub.db_url)")
    parser.add_argument("--user", default="admin", help="the admin's user name")
    parser.add_argument(
        "--password-file",
        type=Path,
        required=True,
        help="the admin's password; generated (0600) when missing",
    )
    args = parser.parse_args(argv)
    try:
        created = ensure_admin(args.db_url, args.user, args.password_file)
    except LoginConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if created is not None:
        print(created)
    return 0


if __name__ == "__main__":
    sys.exit(main())
