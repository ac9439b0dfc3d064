"""The application behind every sidecar: one tiny HTTP server per agent on 127.0.0.1."""

from __future__ import annotations

import http.server
import sys
import threading

BODY = b"hello from app\n"


class _App(http.server.BaseHTTPRequestHandler):
    """200 with `server: app` and a short body, for any method and path."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else Nagle + delayed ACK add ~40 ms per response

    def _answer(self, with_body: bool) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        if with_body:
            self.wfile.write(BODY)

    def do_GET(self) -> None:
        self._answer(True)

    def do_POST(self) -> None:
        self._answer(True)

    def do_PUT(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def version_string(self) -> str:
        return "app"

    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that does not print a traceback when a client (an Envoy being
    stopped, say) resets its connection."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class LoopbackServer:
    """A QuietServer on 127.0.0.1:<free port>, served from a daemon thread."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler], thread_name: str) -> None:
        self._server = QuietServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=thread_name, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class Upstream(LoopbackServer):
    """The app every sidecar forwards to."""

    def __init__(self) -> None:
        super().__init__(_App, "meshagent-app")
