"""The OpenAI-compatible HTTP client of the LLM refiner and labeller: it trusts the server with nothing
(a total deadline per attempt, same-origin redirects only, capped answers, checked token counts), so a
hostile or broken server costs bounded time and never sees the API key outside the origin the user named.
"""

from __future__ import annotations

import email.utils
import errno
import hashlib
import http.client
import ipaddress
import json
import logging
import math
import os
import random
import re
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import timezone
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

from xtm.config import RefinerConfig, Sampling, check_api_key_env, check_llm_url
from xtm.errors import XtmError

if TYPE_CHECKING:
    from xtm.trainer.phase2.refiners import StepStats

logger = logging.getLogger(__name__)

# Defaults are xtm.config's: the client's key variable, concurrency, timeout and retries are a RefinerConfig's.
_DEFAULT = RefinerConfig()


def chat_completions_url(url: str) -> str:
    """Accept http://host:port, http://host:port/v1 or the full .../chat/completions URL; a query string
    (a gateway's api-version=...) stays at the end, after the path."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions" if path.endswith("/v1") else "/v1/chat/completions"
    return urlunsplit(parts._replace(path=path))


# Status codes: followed when the target has the same origin; the run stops (retrying cannot fix a
# wrong key, URL or model); retried (the server is busy or briefly broken); anything else is given up at once.
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
FATAL_CODES = frozenset({401, 403, 404})
RETRY_CODES = frozenset({408, 409, 425, 429})
MAX_REDIRECTS = 3
MAX_USAGE_TOKENS = 10**7        # one request's token count above this is not a count


class BadAnswerError(Exception):
    """An HTTP 2xx whose body is no usable chat completion (wrong shape, not JSON, truncated, too large)."""


class _TransientError(Exception):
    """A failed attempt worth retrying; `retry_after` is the server's requested wait in seconds, if any."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _GiveUpError(Exception):
    """A failed attempt that the same request would fail again (400, 413, 422, ...): no retry."""


def _origin(parts: SplitResult) -> tuple[str, str, int]:
    """(scheme, host, port): where the API key may go. Raises ValueError on a malformed port."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def _is_loopback(host: str) -> bool:
    """`host` (a URL's hostname, lowercased) is this machine: `localhost` or a loopback address. Not other names
    under .localhost: this machine resolves those through mDNS and DNS, which may answer with any address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _show_origin(origin: tuple[str, str, int]) -> str:
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return _printable(f"{scheme}://{host}:{port}")


def _without_query(parts: SplitResult) -> str:
    """A URL as messages show it: no query string or fragment (a gateway may take a key there)."""
    return _printable(urlunsplit(parts._replace(query="", fragment="")))


def _printable(text: str, limit: int = 120) -> str:
    """Server-controlled text made safe for one log line."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _shutdown(sock: socket.socket) -> None:
    """Shut a socket down under a reader blocked in recv, which then returns at once (EOF).

    The plain socket method, also for TLS sockets: SSLSocket.shutdown would pull the SSL object from
    under the reading thread."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


class _InterimSkippingResponse(http.client.HTTPResponse):
    """http.client skips 100 Continue only: a 103 Early Hints (or another 1xx) before the answer was taken for the
    answer, and the request given up ("HTTP 103"). Interim responses are skipped, at most MAX_INTERIM of them."""

    MAX_INTERIM = 16

    def _read_status(self) -> tuple[str, int, str]:
        for _ in range(self.MAX_INTERIM):
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not (100 < status < 200) or status == 101:  # (100 is begin()'s own; 101 switches protocols)
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim response's headers, dropped
        raise http.client.HTTPException(f"more than {self.MAX_INTERIM} interim responses")


def _connect(host: str, port: int, timeout: float | None, killed: threading.Event) -> socket.socket:
    """A TCP connection to (host, port) that gives up at `timeout` or as soon as `killed` is set: a blocking connect
    cannot be woken from another thread, so a Ctrl-C waited out --llm-timeout for a host that drops packets."""
    deadline = time.monotonic() + (timeout if timeout is not None else 3600.0)
    error: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in _resolve(host, port, deadline, killed):
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            with selectors.DefaultSelector() as sel:
                sel.register(sock, selectors.EVENT_WRITE)
                while code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                    if killed.is_set():
                        raise OSError(errno.ECANCELED, "the request was cut")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("timed out connecting")
                    if sel.select(min(0.1, left)):
                        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as e:
            sock.close()
            error = e
            if killed.is_set():
                break
    raise error


def _resolve(host: str, port: int, deadline: float, killed: threading.Event) -> list[Any]:
    """socket.getaddrinfo for a TCP connection, given up at `deadline` or when `killed` is set: a resolver that
    hangs (no DNS answer) held a request past --llm-timeout and a Ctrl-C with it. The lookup runs in a daemon
    thread, which a hung resolver leaves behind until it answers (it holds nothing)."""
    found: list[Any] = []

    def look_up() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM))
        except Exception as e:  # noqa: BLE001 - raised in the caller's thread (a name idna refuses: UnicodeError)
            found.append(e)

    worker = threading.Thread(target=look_up, name="xtm-llm-resolve", daemon=True)
    worker.start()
    while worker.is_alive():
        if killed.is_set():
            raise OSError(errno.ECANCELED, "the request was cut")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no address for {host} in time")
        worker.join(min(0.1, left))
    if isinstance(found[0], Exception):
        raise found[0]
    return found[0]


class _WatchedHTTPConnection(http.client.HTTPConnection):
    """HTTP whose socket is handed to `on_socket` (the deadline watchdog) as soon as it is connected, and whose
    connecting is cut when `killed` is set."""

    on_socket: Callable[[socket.socket], None]
    killed: threading.Event
    response_class = _InterimSkippingResponse

    def connect(self) -> None:
        self.sock = _connect(self.host, self.port, self.timeout, self.killed)
        self.on_socket(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose TLS socket reaches the watchdog before the handshake, so a dripping handshake
    is cut at the deadline too (HTTPSConnection.connect without tunnels, handshake made explicit)."""

    on_socket: Callable[[socket.socket], None]
    response_class = _InterimSkippingResponse

    killed: threading.Event

    def connect(self) -> None:
        self.sock = _connect(self.host, self.port, self.timeout, self.killed)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host, do_handshake_on_connect=False)
        self.on_socket(self.sock)
        self.sock.do_handshake()


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP date); None when absent or garbage."""
    if not value or not value.strip():
        return None
    try:
        secs = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        return max(0.0, when.timestamp() - time.time())
    return secs if math.isfinite(secs) and secs >= 0 else None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_completion(body: bytes) -> tuple[str, Any]:
    """(content text, usage object) of a chat-completion body; BadAnswerError when it has another shape."""
    try:
        out = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadAnswerError("the answer is not JSON") from None
    choices = out.get("choices") if isinstance(out, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):         # content parts: [{"type": "text", "text": ...}, ...]
        texts = [part.get("text") for part in content if isinstance(part, dict)]
        content = "".join(t for t in texts if isinstance(t, str)) if any(isinstance(t, str) for t in texts) else None
    if not isinstance(content, str):
        raise BadAnswerError("the answer has no choices[0].message.content text")
    # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 writer (the answer cache, a log, labels.json)
    # can encode: U+FFFD instead, as a decoder does with broken UTF-8. A valid pair is one character already.
    return _LONE_SURROGATE.sub("\ufffd", content), out.get("usage")


def usage_tokens(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens of a `usage` object; (0, 0) when absent; None when not believable."""
    if usage is None:
        return 0, 0
    if not isinstance(usage, dict):
        return None
    counts = []
    for name in ("prompt_tokens", "completion_tokens"):
        v = usage.get(name)
        if v is None:
            v = 0
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= MAX_USAGE_TOKENS:
            return None
        counts.append(v)
    return counts[0], counts[1]


class OpenAICompatibleGenerator:
    """K x R chat-completion requests to any OpenAI-compatible server, at most `concurrency` at once.

    Each round is its own request with its own seed (many servers ignore `n`). The client trusts the
    server with nothing (standard library http.client, explicit limits):
      * `timeout` is a total deadline per attempt (connect, send, headers, body, redirects), enforced
        by a watchdog that shuts the socket down, so a server dripping one byte a second costs `timeout`;
      * redirects are followed only within the origin of --llm-url (scheme, host, port), at most
        MAX_REDIRECTS times, re-sending the same POST; another origin stops the run: the API key is
        never sent anywhere but the origin the user named;
      * an answer larger than `response_cap(max_tokens)` is refused without reading it all, one of another
        shape, not JSON or truncated is a bad answer (counted, retried, then None);
      * token counts that are not believable are ignored (counted), never added to the stats.
    Transient failures (connection errors, timeouts, bad answers, 408/409/425/429, 5xx) are retried
    with exponential backoff and jitter, or after the server's Retry-After on 429/503; every wait is
    capped at `max_retry_wait` seconds. A request that still fails yields None (the topic keeps its
    last good set). Errors that retrying cannot fix (401, 403, 404, a redirect elsewhere or in a loop)
    stop with a clear message. The API key comes from an environment variable and is never logged:
    no message includes anything the server wrote back.
    """

    # A token is a few bytes of text, at most ~100 as JSON escapes; the JSON around the text is small.
    # The cap follows max_tokens so that parsing a hostile answer stays cheap (about 3 s per MB here).
    MAX_RESPONSE_BYTES = 2 * 2**20
    # What a request that failed every attempt leaves, in its warning: phase 2's words; xtm-label sets its own.
    failure_note = "the topic keeps its last refined set"
    RESPONSE_BYTES_BASE = 64 * 2**10
    RESPONSE_BYTES_PER_TOKEN = 256

    def __init__(self, url: str, model: str, api_key_env: str = _DEFAULT.api_key_env,
                 concurrency: int = _DEFAULT.concurrency, timeout: float = _DEFAULT.timeout,
                 retries: int = _DEFAULT.retries, backoff: float = 1.0, max_retry_wait: float = 60.0,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        if not url:
            raise XtmError("--refiner openai needs --llm-url (e.g. http://127.0.0.1:8000/v1)")
        if not model:
            raise XtmError("--refiner openai needs --llm-model (the model name the server knows)")
        check_llm_url(url, api_key_env)  # no credential in it: before anything shows or records it
        self.url = chat_completions_url(url)
        self.origin = self._check_url(self.url)
        self.shown_url = _without_query(urlsplit(self.url))  # what messages show
        self.model = model
        self.id = f"openai:{model}"
        # Answers are cached per server as well as per model name: two servers given the same --llm-model (a
        # llama.cpp server ignores the name; "local" and "default" are common) are not one model. The whole URL
        # (its digest): the shown one is cut at 120 characters and loses its query, so two gateway deployments
        # (`.../legal-v1`, `.../medical-v2`, or `?deployment=a` / `=b`) shared one model's answers.
        url_digest = hashlib.sha256(self.url.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        self.cache_id = f"openai:{model}@{url_digest}"
        self._key = self._read_key(api_key_env)
        if self._key and not self._may_send_key(api_key_env):
            logger.warning(f"${api_key_env} is not sent to {_show_origin(self.origin)}: plain http to another host "
                           "than this one would show it to the network; use https, or put the key for this server "
                           "in its own variable and name it with --llm-api-key-env (sent as you ask, over http too)")
            self._key = None
        self.concurrency = max(1, int(concurrency))
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.max_retry_wait = float(max_retry_wait)
        self.max_response_bytes = int(max_response_bytes)
        # The exchanges under way (their sockets' kill switches): a Ctrl-C cuts them at once instead of waiting up to
        # --llm-timeout for each (a second and third Ctrl-C did not stop a run waiting on a hung server).
        # Kept per generate_jobs call (its give_up event, which the request's thread holds in _call): an interrupt
        # of one call cuts its own requests, not another call's on the same client.
        self._inflight: dict[threading.Event | None, set[Callable[[], None]]] = {}
        self._inflight_lock = threading.Lock()
        self._call = threading.local()

    @staticmethod
    def _check_url(url: str) -> tuple[str, str, int]:
        parts = urlsplit(url)
        try:
            origin = _origin(parts)
        except ValueError:
            raise XtmError(f"--llm-url has an invalid port: {_without_query(parts)}") from None
        if origin[0] not in ("http", "https") or not origin[1]:
            raise XtmError(f"--llm-url must be an http:// or https:// address (e.g. http://127.0.0.1:8000/v1), "
                           f"got '{_without_query(parts)}'")
        return origin

    def _may_send_key(self, api_key_env: str) -> bool:
        """Whether the key may go to --llm-url: over https, to this machine, or from a variable the user named for
        it. The default variable ($OPENAI_API_KEY, often a real OpenAI key) went in cleartext to any http:// server,
        a keyless lab server included, without being asked for."""
        scheme, host, _ = self.origin
        return scheme == "https" or _is_loopback(host) or api_key_env != _DEFAULT.api_key_env

    @staticmethod
    def _read_key(api_key_env: str) -> str | None:
        check_api_key_env(api_key_env)
        if api_key_env not in os.environ and api_key_env != _DEFAULT.api_key_env:
            logger.warning(f"--llm-api-key-env {api_key_env}: that variable is not set, so requests go without an "
                           "API key")
        key = os.environ.get(api_key_env, "").strip()
        if any(not 0x21 <= ord(c) <= 0x7E for c in key):
            # A header value with CR/LF would inject headers; never echo the key itself.
            raise XtmError(f"the API key in ${api_key_env} contains spaces, control or non-ASCII characters")
        return key or None

    # ---- one HTTP exchange under a deadline -----------------------------------------------------
    def response_cap(self, max_tokens: int) -> int:
        """The largest answer body accepted for a request of `max_tokens` tokens (bytes)."""
        by_tokens = self.RESPONSE_BYTES_BASE + self.RESPONSE_BYTES_PER_TOKEN * max(0, int(max_tokens))
        return min(self.max_response_bytes, by_tokens)

    def _exchange(self, url: str, payload: bytes, deadline: float, cap: int
                  ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """POST `payload` to `url`: (status, headers, body of a 2xx up to `cap` bytes), all before `deadline`."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _TransientError(f"no complete answer within {self.timeout:g}s")
        parts = urlsplit(url)
        cls = _WatchedHTTPSConnection if parts.scheme.lower() == "https" else _WatchedHTTPConnection
        killed = threading.Event()
        sockets: list[socket.socket] = []     # kept here: http.client drops conn.sock on "Connection: close"

        def on_socket(sock: socket.socket) -> None:
            sockets.append(sock)
            if killed.is_set():               # the watchdog fired while connecting
                _shutdown(sock)

        def kill() -> None:
            killed.set()
            for sock in sockets:
                _shutdown(sock)

        call = getattr(self._call, "give_up", None)
        with self._inflight_lock:
            self._inflight.setdefault(call, set()).add(kill)

        # (the port always given: http.client reads a bare IPv6 address's last group as the port, so
        # http://[::1]/v1 went to host ':' port 1, and http://[::1:8082]/v1 took the key to port 8082)
        conn = cls(parts.hostname or "", _origin(parts)[2], timeout=remaining)
        conn.on_socket, conn.killed = on_socket, killed
        watchdog = threading.Timer(remaining, kill)
        watchdog.daemon = True
        watchdog.start()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        try:
            conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body=payload,
                         headers=headers)
            resp = conn.getresponse()
            body = self._read_body(resp, cap) if 200 <= resp.status < 300 else b""
            if killed.is_set():
                raise _TransientError(f"no complete answer within {self.timeout:g}s")
            return resp.status, resp.headers, body
        except BadAnswerError:
            if killed.is_set():               # cut by the watchdog, not truncated by the server
                raise _TransientError(f"no complete answer within {self.timeout:g}s") from None
            raise
        except (http.client.HTTPException, OSError, ValueError, AttributeError) as e:
            if killed.is_set():
                raise _TransientError(f"no complete answer within {self.timeout:g}s") from None
            if isinstance(e, http.client.IncompleteRead):
                raise BadAnswerError("the answer was truncated") from None
            if isinstance(e, ssl.SSLCertVerificationError):  # (retried 5 times, 17 s a request, then skipped)
                raise XtmError(f"the LLM server at {self.shown_url} has a TLS certificate this machine does not "
                               f"trust ({_printable(str(e.verify_message or 'verification failed'), 80)}): for a "
                               "private CA, point SSL_CERT_FILE at its certificate") from None
            raise _TransientError(type(e).__name__) from None
        finally:
            watchdog.cancel()
            with self._inflight_lock:
                mine = self._inflight[call]
                mine.discard(kill)
                if not mine:
                    del self._inflight[call]
            conn.close()

    @staticmethod
    def _read_body(resp: http.client.HTTPResponse, cap: int) -> bytes:
        if resp.length is not None and resp.length > cap:
            raise BadAnswerError(f"an answer of {resp.length} bytes was refused (limit {cap})")
        data = resp.read(cap + 1)
        if len(data) > cap:
            raise BadAnswerError(f"an answer over {cap} bytes was refused")
        if resp.length:                 # Content-Length promised more than the server sent
            raise BadAnswerError("the answer was truncated")
        return data

    def _post(self, payload: bytes, cap: int) -> bytes:
        """The body of a 2xx answer to one attempt, following same-origin redirects (bounded)."""
        deadline = time.monotonic() + self.timeout
        url = self.url
        for _ in range(MAX_REDIRECTS + 1):
            status, headers, body = self._exchange(url, payload, deadline, cap)
            if status in REDIRECT_CODES:
                url = self._redirect_target(url, headers.get("Location"))
                continue
            if 200 <= status < 300:
                return body
            if status in FATAL_CODES:
                phrase = HTTPStatus(status).phrase   # never the server's own reason text: it may echo the key
                raise XtmError(f"the LLM server at {self.shown_url} answered HTTP {status} ({phrase}): check "
                               "--llm-url, --llm-model and the API key variable")
            if status in RETRY_CODES or status >= 500:
                wait = retry_after_seconds(headers.get("Retry-After")) if status in (429, 503) else None
                raise _TransientError(f"HTTP {status}", wait)
            raise _GiveUpError(f"HTTP {status}")
        raise XtmError(f"the LLM server at {self.shown_url} redirected more than {MAX_REDIRECTS} times: set --llm-url "
                       "to the final address")

    def _redirect_target(self, url: str, location: str | None) -> str:
        """The URL to follow, only within the origin of --llm-url: the key must go nowhere else."""
        if not location:
            raise _GiveUpError("a redirect without a Location")
        try:  # a malformed Location (`http://[oops/`) is an origin xtm cannot name: never followed
            target = urljoin(url, location.strip())
            origin = _origin(urlsplit(target))
        except ValueError:
            target, origin = "", ("?", "?", 0)
        if origin != self.origin:
            raise XtmError(f"the LLM server at {_show_origin(self.origin)} redirected to another origin "
                           f"({_show_origin(origin)}); xtm does not follow it, so the API key is never sent "
                           "there: if you trust that address, pass it as --llm-url")
        return target

    # ---- one request: attempts, waits, accounting -----------------------------------------------
    def _wait(self, attempt: int, retry_after: float | None) -> float:
        wait = self.backoff * 2 ** attempt * (0.5 + random.random()) if retry_after is None else retry_after
        return min(wait, self.max_retry_wait)

    def _one(self, prompt: str, round_index: int, sampling: Sampling, stats: StepStats,
             give_up: threading.Event | None = None) -> str | None:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": sampling.temperature, "top_p": sampling.top_p,
                "max_tokens": sampling.max_tokens, "seed": sampling.seed + round_index, "stream": False}
        payload = json.dumps(body).encode("utf-8")
        cap = self.response_cap(sampling.max_tokens)
        reason, attempt = "", 0
        for attempt in range(self.retries + 1):
            stats.add(calls=1)
            retry_after = None
            try:
                text, usage = parse_completion(self._post(payload, cap))
            except BadAnswerError as e:
                stats.add(bad_answers=1)
                reason = str(e)
            except _TransientError as e:
                reason, retry_after = str(e), e.retry_after
            except _GiveUpError as e:
                reason = str(e)
                break
            else:
                tokens = usage_tokens(usage)
                if tokens is None:
                    stats.add(ignored_usage=1)
                else:
                    stats.add(prompt_tokens=tokens[0], completion_tokens=tokens[1])
                return text
            if give_up is not None and give_up.is_set():
                return None  # stopped (Ctrl-C, another request's fatal answer): cut, not failed; nothing to say
            if attempt < self.retries:
                if give_up is None:
                    time.sleep(self._wait(attempt, retry_after))
                elif give_up.wait(self._wait(attempt, retry_after)):
                    return None  # the refinement was stopped: no warning, nothing more to ask
        logger.warning(f"LLM request failed after {attempt + 1} attempts ({reason}); {self.failure_note}")
        return None

    def generate(self, prompts: list[str], rounds: int, sampling: Sampling,
                 stats: StepStats) -> list[list[str | None]]:
        texts = self.generate_jobs([(p, r) for p in prompts for r in range(rounds)], sampling, stats)
        return [texts[i * rounds:(i + 1) * rounds] for i in range(len(prompts))]

    def generate_jobs(self, jobs: list[tuple[str, int]], sampling: Sampling, stats: StepStats,
                      on_answer: Callable[[int, str | None], None] | None = None) -> list[str | None]:
        """One answer per (prompt, round index): rounds are independent requests, so the refiner
        asks only for the ones its cache lacks. `on_answer(job index, answer)` is called (in the
        request's thread) as each one arrives."""

        give_up = threading.Event()  # set when the caller stops waiting: requests in flight make no new attempt

        def one(index: int, prompt: str, r: int) -> str | None:
            if give_up.is_set():
                return None  # a fatal answer came back to another request: this one is never sent
            self._call.give_up = give_up  # (this thread's requests belong to this call: see _inflight)
            try:
                text = self._one(prompt, r, sampling, stats, give_up)
            except BaseException:
                give_up.set()  # at once, not when the caller reaches this future: queued requests stay unsent
                raise
            if on_answer is not None:
                on_answer(index, text)
            return text

        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = [pool.submit(one, index, prompt, r) for index, (prompt, r) in enumerate(jobs)]
            # The first failure is raised as it happens, not after the requests submitted before it (one slow
            # request would otherwise hold a wrong key's error while every other request went out with it).
            wait(futures, return_when=FIRST_EXCEPTION)
            for fut in futures:
                if fut.done() and fut.exception() is not None:
                    fut.result()  # raises it
            return [fut.result() for fut in futures]
        except BaseException:
            give_up.set()  # Ctrl-C or a fatal answer: no new attempt, and the ones under way cut now
            with self._inflight_lock:
                kills = list(self._inflight.get(give_up, ()))
            for kill in kills:
                kill()
            raise
        finally:
            # A fatal error (wrong key, redirect elsewhere) stops the step without sending the rest.
            pool.shutdown(wait=True, cancel_futures=True)
