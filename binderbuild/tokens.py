"""Short-lived signed build tokens (JWT, HS256).

The launch page embeds one so that its own event stream is not counted by
the per-IP rate limit. The audience is ``{provider}/{spec}`` and the token is
bound to the page's origin, so it cannot be reused for another repository or
from another site.
"""

from __future__ import annotations

import secrets
import time

import jwt

from binderbuild.errors import Forbidden


class BuildTokens:
    def __init__(self, secret: str = "", expires_seconds: float = 300.0, check_origin: bool = True):
        # A random secret per process is fine for one replica; several replicas
        # must share BinderBuild.build_token_secret.
        self.secret = secret or secrets.token_hex(32)
        self.expires_seconds = expires_seconds
        self.check_origin = check_origin

    def issue(self, provider_id: str, spec: str, origin: str) -> str:
        now = int(time.time())
        claims = {
            "aud": f"{provider_id}/{spec}",
            "origin": origin,
            "iat": now,
            "exp": now + int(self.expires_seconds),
        }
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str, provider_id: str, spec: str, origin: str) -> None:
        """Raise Forbidden unless the token is valid for this repository and origin."""
        try:
            claims = jwt.decode(
                token, self.secret, algorithms=["HS256"], audience=f"{provider_id}/{spec}"
            )
        except jwt.ExpiredSignatureError:
            raise Forbidden("Build token expired; reload the page.") from None
        except jwt.InvalidTokenError as exc:
            raise Forbidden(f"Invalid build token: {exc}") from None
        if self.check_origin and claims.get("origin") != origin:
            raise Forbidden("Build token was issued for another origin.")
