"""Republish a p2preg node's loopback ``GET /metrics`` on another address, and nothing else.

The node serves ``/metrics`` only on its loopback ``/v2`` listener; with ``metrics.expose`` the
chart runs this as a sidecar (the image's python3, standard library only) so Prometheus can
scrape every node at ``HOST_IP:metrics.port``. Any other path or method answers 404/405.
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TIMEOUT_S = 10.0


def make_handler(target: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "p2preg-metrics-proxy"

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/metrics":
                self.send_error(404)
                return
            headers = {"Accept": self.headers.get("Accept", "text/plain")}
            try:
                with urllib.request.urlopen(urllib.request.Request(target, headers=headers),
                                            timeout=TIMEOUT_S) as response:
                    body = response.read()
                    content_type = response.headers.get("Content-Type", "text/plain")
                    status = response.status
            except (urllib.error.URLError, OSError) as exc:
                self.send_error(502, f"node unreachable: {exc}")
                return
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.send_error(405)

        do_PUT = do_DELETE = do_PATCH = do_POST

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes are not worth a log line each

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to serve /metrics on")
    parser.add_argument("--target", required=True, help="URL of the node's /metrics")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host.strip("[]"), int(port)), make_handler(args.target))
    print(f"serving {args.target} on http://{args.listen}/metrics", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
