"""Keep secrets out of logs, events and metrics.

``Scrubber`` replaces every configured secret value (registry password, hub
token, provider tokens, build-token signing key) and any ``user:password@``
credentials in URLs with ``***``. It is applied to build output before it
becomes an event, and by the log formatters (``logging_setup``) to every
finished log line, tracebacks included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# The lookbehind and the bounded scheme keep this linear: an unbounded scheme
# made a long run of letters (one huge build log line) quadratic.
_URL_CREDENTIALS = re.compile(
    r"(?<![a-zA-Z0-9+.-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]{0,31}://)[^/\s:@]+(:[^/\s@]*)?@"
)
_TOKEN_LIKE = re.compile(r"(?i)(authorization:\s*(?:bearer|basic|token)\s+)\S+")


class Scrubber:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        # Very short values would blank out ordinary words; they are not
        # meaningful secrets anyway.
        self._secrets.update(s for s in secrets if s and len(s) >= 6)

    def scrub(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "***")
        text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
        return _TOKEN_LIKE.sub(r"\1***", text)
