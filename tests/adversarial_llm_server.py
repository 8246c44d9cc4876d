"""An adversarial OpenAI-compatible chat server on 127.0.0.1, for testing LLM clients.

A real `http.server` in a thread whose answer to each request follows a script of modes (then a
default mode). It records every request it receives (method, path, headers, JSON body) so a test
can check what a client sent, and how many bytes it pushed out, so a test can check that a client
stopped reading. Modes:

  good            a well-formed completion with `answer` as the content
  empty           a well-formed completion whose content is ""
  redirect        302 to `redirect_to` (another server: another origin)
  redirect_same   307 to /moved/<path> on this server (same origin), then served normally
  shape:<name>    HTTP 200 with a body of the wrong shape (see SHAPES), e.g. shape:list = [1,2,3]
  truncated       Content-Length promises more than is sent, then the connection closes
  drip            a good answer sent one byte every `drip_interval` seconds, body only
  drip_headers    the same from the very first byte of the status line
  retry_after     429 with `Retry-After: <retry_after>`
  unavailable     503 with `Retry-After: <retry_after>`
  huge            a valid completion of `huge_bytes` bytes announced by Content-Length
  huge_chunked    a valid completion streamed in chunks without any length, `huge_bytes` long
  echo_key        401 whose reason phrase and body repeat the request's Authorization header
  header_flood    a status line and then thousands of header lines
  garbage_status  a status line that is not HTTP at all
  status:<code>   that bare status code
  early_hints     a 103 Early Hints interim response, then a good answer

`DripTLSServer` does the same as `drip` one level down: an https:// endpoint whose TLS handshake drips.

`tls=(certfile, keyfile)` serves the same over https.

Nothing here is a mock of the client: it is a server that misbehaves on purpose.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GOOD_ANSWER = "Topic 0: sport\nEN: player - team - market\nZH: 球员 - 球队 - 市场"


def completion(content: Any, usage: Any = None) -> dict[str, Any]:
    """An OpenAI chat-completion object with `content` (and `usage` when given)."""
    out: dict[str, Any] = {"id": "x", "object": "chat.completion",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                        "finish_reason": "stop"}]}
    if usage is not None:
        out["usage"] = usage
    return out


# Bodies of HTTP 200 answers that are not a usable chat completion.
SHAPES: dict[str, bytes] = {
    "list": b"[1,2,3]",
    "choices_null": b'{"choices": null}',
    "choices_empty": b'{"choices": []}',
    "choice_str": b'{"choices": ["EN: player"]}',
    "message_str": b'{"choices": [{"message": "EN: player"}]}',
    "content_null": json.dumps(completion(None)).encode(),
    "content_int": json.dumps(completion(7)).encode(),
    "not_json": b"<html><body>502 Bad Gateway</body></html>",
    "not_utf8": b'{"choices": [{"message": {"content": "\xff\xfe"}}]}',
    "deep": b"[" * 200_000,
    "string": b'"EN: player - team"',
    "null": b"null",
}

# HTTP 200 answers whose text is fine but whose token counts are garbage.
USAGES: dict[str, Any] = {
    "usage_list": [1, 2, 3],
    "usage_negative": {"prompt_tokens": -5, "completion_tokens": -10},
    "usage_infinite": {"prompt_tokens": 1e400, "completion_tokens": 1e400},
    "usage_huge": {"prompt_tokens": 10**30, "completion_tokens": 10**30},
    "usage_strings": {"prompt_tokens": "12", "completion_tokens": "many"},
    "usage_bools": {"prompt_tokens": True, "completion_tokens": [5]},
    "usage_float": {"prompt_tokens": 1.5, "completion_tokens": float("nan")},
}


class AdversarialLLMServer:
    """An OpenAI-compatible endpoint whose answers follow `script`, then `default` (see the module doc)."""

    def __init__(self, script: Iterable[str] = (), default: str = "good", answer: str = GOOD_ANSWER,
                 redirect_to: str | None = None, retry_after: str = "1", drip_interval: float = 0.2,
                 huge_bytes: int = 36_000_000, tls: tuple[str, str] | None = None) -> None:
        self.script = list(script)
        self.default = default
        self.answer = answer
        self.redirect_to = redirect_to
        self.retry_after = retry_after
        self.drip_interval = drip_interval
        self.huge_bytes = huge_bytes
        self.requests: list[dict[str, Any]] = []
        self.bytes_sent = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        scheme = "http"
        if tls is not None:                     # (certificate file, key file): serve https
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.origin = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.origin + "/v1"
        # A short poll interval: close() (shutdown) returns within 50 ms instead of 500.
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def __enter__(self) -> AdversarialLLMServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def next_mode(self) -> str:
        with self._lock:
            return self.script.pop(0) if self.script else self.default

    def record(self, handler: BaseHTTPRequestHandler, mode: str) -> dict[str, Any]:
        n = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        req = {"method": handler.command, "path": handler.path, "headers": dict(handler.headers), "body": body,
               "mode": mode}
        with self._lock:
            self.requests.append(req)
        return req

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                try:
                    server.answer_request(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass            # the client hung up on us: what a good client does with a bad server

            do_GET = do_POST        # noqa: N815 - urllib turns a 302 after POST into a GET

        return Handler

    # ---- what each mode sends ------------------------------------------------------------------
    def write(self, h: BaseHTTPRequestHandler, data: bytes) -> None:
        h.wfile.write(data)
        h.wfile.flush()
        with self._lock:
            self.bytes_sent += len(data)

    def answer_request(self, h: BaseHTTPRequestHandler) -> None:
        mode = self.next_mode()
        req = self.record(h, mode)
        h.close_connection = True
        name, _, arg = mode.partition(":")
        if mode == "good" or mode in USAGES:
            usage = USAGES.get(mode, {"prompt_tokens": 10, "completion_tokens": 5})
            self.send_json(h, 200, json.dumps(completion(self.answer, usage)).encode())
        elif mode == "early_hints":
            body = json.dumps(completion(self.answer, {"prompt_tokens": 10, "completion_tokens": 5})).encode()
            self.write(h, b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                          + f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                            "Connection: close\r\n\r\n".encode() + body)
        elif mode == "empty":
            self.send_json(h, 200, json.dumps(completion("", {"prompt_tokens": 10, "completion_tokens": 0})).encode())
        elif mode == "redirect":
            self.send_bare(h, 302, {"Location": self.redirect_to or "http://127.0.0.2:9/v1/chat/completions"})
        elif mode == "redirect_same":
            self.send_bare(h, 307, {"Location": "/moved" + req["path"]})
        elif name == "shape":
            self.send_json(h, 200, SHAPES[arg])
        elif mode == "truncated":
            body = json.dumps(completion(self.answer)).encode()
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body) + 100}\r\nConnection: close\r\n\r\n").encode()
            self.write(h, head + body[: len(body) // 2])
        elif mode in ("drip", "drip_headers"):
            self.drip(h, headers_too=mode == "drip_headers")
        elif mode in ("retry_after", "unavailable"):
            self.send_bare(h, 429 if mode == "retry_after" else 503, {"Retry-After": self.retry_after})
        elif mode in ("huge", "huge_chunked"):
            self.huge(h, chunked=mode == "huge_chunked")
        elif mode == "echo_key":
            secret = h.headers.get("Authorization", "")
            body = json.dumps({"error": {"message": f"invalid key {secret}"}}).encode()
            head = (f"HTTP/1.1 401 Unauthorized key {secret}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
            self.write(h, head + body)
        elif mode == "header_flood":
            self.write(h, b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Junk-%d: %s\r\n" % (i, b"j" * 100)
                                                          for i in range(5000)) + b"\r\n")
        elif mode == "garbage_status":
            self.write(h, b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        elif name == "status":
            self.send_bare(h, int(arg), {})
        elif name == "slow":  # a good answer after `arg` seconds
            if not self.stopping.wait(float(arg)):
                self.send_json(h, 200, json.dumps(completion(self.answer, {"prompt_tokens": 1})).encode())
        else:
            raise ValueError(f"unknown mode {mode!r}")

    def send_json(self, h: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        self.write(h, body)

    def send_bare(self, h: BaseHTTPRequestHandler, status: int, headers: dict[str, str]) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", "0")
        h.end_headers()
        h.wfile.flush()

    def drip(self, h: BaseHTTPRequestHandler, headers_too: bool) -> None:
        body = json.dumps(completion(self.answer)).encode()
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n").encode()
        if not headers_too:
            self.write(h, head)
        for i in range(len(body) if not headers_too else len(head) + len(body)):
            if self.stopping.wait(self.drip_interval):
                return
            self.write(h, (body if not headers_too else head + body)[i:i + 1])

    def huge(self, h: BaseHTTPRequestHandler, chunked: bool) -> None:
        # Valid JSON whose content is `huge_bytes` of real vocabulary words: usable if accepted whole.
        prefix, suffix = json.dumps(completion("<>")).encode().split(b"<>")
        piece = ("player - team - 球员 - " * 3000).encode()
        n = max(1, self.huge_bytes // len(piece))
        if chunked:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            for part in [prefix] + [piece] * n + [suffix]:
                if self.stopping.is_set():
                    return
                self.write(h, b"%x\r\n%s\r\n" % (len(part), part))
            self.write(h, b"0\r\n\r\n")
            return
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(prefix) + n * len(piece) + len(suffix)))
        h.end_headers()
        for part in [prefix] + [piece] * n + [suffix]:
            if self.stopping.is_set():
                return
            self.write(h, part)


class DripTLSServer:
    """A TCP server on 127.0.0.1 that answers a TLS ClientHello with a record header announcing 16 KB,
    then one byte every `interval` seconds: a TLS handshake that never ends (no certificate needed)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.stopping = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(4096)                                  # the ClientHello
                conn.sendall(b"\x16\x03\x03\x40\x00")               # handshake record, 16384 bytes follow
                while not self.stopping.wait(self.interval):
                    conn.sendall(b"\x00")
            except OSError:
                pass

    def close(self) -> None:
        self.stopping.set()
        self.sock.close()

    def __enter__(self) -> DripTLSServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    """Poll `predicate` until true or `timeout` seconds passed (for server-side counters)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
