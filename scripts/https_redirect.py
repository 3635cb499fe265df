"""Plain HTTP on the public address, answered with a redirect to HTTPS.

scripts/run.sh runs this in public mode when it has an HTTP port
(``--http-port``, or 80 when the public port is 443). Every request gets a
301 to the configured public origin with the same path and query: the
target comes from ``--origin``, never from the request's Host header, so a
forged Host cannot send anyone elsewhere. (configurable-http-proxy's own
``--redirect-port`` listens on every address and builds the target from
the Host header, which is why it is not used.)
"""

from __future__ import annotations

import argparse
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def make_handler(origin: str) -> type[BaseHTTPRequestHandler]:
    class Redirect(BaseHTTPRequestHandler):
        server_version = "binderbuild-redirect"
        sys_version = ""

        def _redirect(self) -> None:
            # Only the path and query of the request line: an absolute-form
            # target ("GET http://elsewhere/x") keeps nothing of its host.
            parts = urlsplit(self.path)
            path = parts.path if parts.path.startswith("/") else "/" + parts.path
            path = "/" + path.lstrip("/")
            location = origin + path + (f"?{parts.query}" if parts.query else "")
            self.send_response(301)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _redirect

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            sys.stderr.write(f"redirect: {self.address_string()} {format % args}\n")

    return Redirect


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Redirect plain HTTP to the public HTTPS origin.")
    parser.add_argument("--listen", required=True, help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--origin", required=True, help="https://name[:port] to redirect to")
    args = parser.parse_args(argv)
    origin = args.origin.rstrip("/")
    if not origin.startswith("https://"):
        parser.error("--origin must be an https:// origin")
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((args.listen, args.port), make_handler(origin))
    print(f"redirect: http://{args.listen}:{args.port}/ -> {origin}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
