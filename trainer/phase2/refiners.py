"""Topic refiners: who proposes the refined bilingual word sets of a refinement step.

One interface, `Refiner.refine(topics, rounds) -> answers[topic][round]`, each answer a
`ParsedAnswer` (words per language, already matched to the vocabularies). Backends:

  embedding     no LLM: words voted from bootstrap resamples around each topic's embedding
                centroid, with the nearest words of every language's vocabulary (the default)
  openai        any OpenAI-compatible endpoint (vllm serve, llama.cpp server, transformers
                serve, hosted APIs): K x R requests, bounded concurrency, timeouts, retries
  vllm          in-process vLLM engine: one batched `chat` call with n = R samples per topic
  transformers  a small local model through transformers (CPU is fine for tiny models)

Every usable LLM answer is cached on disk, keyed by backend, model, prompt, round and sampling
settings: a resumed or repeated run makes no new calls. An unusable answer (no word of any
vocabulary) is never cached, and one found in the cache is a miss. Calls, tokens, seconds and
every kind of bad answer of each refinement step are kept in `stats` (and end up in
history.json / metrics.json).
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timezone
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import numpy as np

from xtm.atomic import atomic_open
from xtm.config import REFINER_NAMES, Phase2Config, RefinerConfig, Sampling, check_llm_url, default_of
from xtm.errors import XtmError, exception_text
from xtm.trainer.phase2.prompt import ParsedAnswer, TopicWords, VocabMatcher, build_prompt, parse_answer

logger = logging.getLogger(__name__)

# Defaults are xtm.config's: words asked for (LLM) or chosen (embedding) per language and topic in one
# answer are phase 2's asked_words (the vote then keeps refined_words); the LLM client's key variable,
# concurrency, timeout and retries a RefinerConfig's.
N_WORDS = default_of(Phase2Config, "asked_words")
_DEFAULT = RefinerConfig()


@dataclass
class StepStats:
    """What one refinement step cost, and what went wrong in it.

    failures       answers with no text at all (every attempt failed: network, timeout, HTTP, bad body)
    unusable       answers with text that named no word of any vocabulary (not cached)
    bad_answers    HTTP 200 bodies refused: wrong-shaped or non-JSON, truncated, larger than the cap
    ignored_usage  answers whose token counts were not believable (negative, non-integer, huge): not added
    stale_cache    cached answers that turned out unusable (an older version cached them): asked again
    """

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    unusable: int = 0
    bad_answers: int = 0
    ignored_usage: int = 0
    stale_cache: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    FIELDS = ("calls", "cache_hits", "failures", "unusable", "bad_answers", "ignored_usage", "stale_cache",
              "prompt_tokens", "completion_tokens", "seconds")

    def add(self, **kw: float) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.FIELDS}


class Refiner(Protocol):
    name: str

    def refine(self, topics: list[TopicWords], rounds: int) -> tuple[list[list[ParsedAnswer]], StepStats]: ...


# --------------------------------------------------------------------------------------------
# Answer cache
# --------------------------------------------------------------------------------------------


_ENTRY_NAME = re.compile(r"^[0-9a-f]{64}\.json$")


class AnswerCache:
    """One small JSON file per (generator, prompt, round, sampling), written atomically, under a size bound.

    The bound: an entry larger than `max_entry_bytes` is not written (the answer is still used), and
    when the directory would grow past `max_bytes` the least recently used entries (oldest
    modification time; a hit refreshes it) are deleted until it is back under 90 % of the bound, so
    eviction is rare rather than once per write. Only files named like our entries
    (`<2 hex>/<64 hex>.json`) are counted or deleted; anything else in the directory is left alone.
    A cache that cannot be written (read-only, disk full, a file in the way) is reported once and
    then skipped: caching saves calls, it is never a reason to stop training.
    """

    MAX_BYTES = 256 * 2**20
    MAX_ENTRY_BYTES = 2**20
    LOW_WATER = 0.9

    def __init__(self, directory: Path | None, max_bytes: int = MAX_BYTES, max_entry_bytes: int = MAX_ENTRY_BYTES
                 ) -> None:
        self.dir = Path(directory) / "llm-answers" if directory is not None else None
        self.max_bytes, self.max_entry_bytes = int(max_bytes), int(max_entry_bytes)
        self._lock = threading.Lock()
        self._size: int | None = None            # bytes of our entries, scanned on the first write
        self._broken = False

    @staticmethod
    def key(generator_id: str, prompt: str, round_index: int, sampling: Sampling) -> str:
        blob = json.dumps({"g": generator_id, "p": prompt, "r": round_index, "s": asdict(sampling)},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        """The cached text; None when there is no entry; "" (an unusable answer) for an entry that is
        there but oversized, corrupt or of another shape, so the caller counts it and asks again."""
        if self.dir is None:
            return None
        p = self._path(key)
        try:
            if p.stat().st_size > self.max_entry_bytes:
                return ""
            entry = json.loads(p.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError, RecursionError):
            return ""
        text = entry.get("text") if isinstance(entry, dict) else None
        if not isinstance(text, str):
            return ""
        try:
            os.utime(p)                          # recently used: evicted last
        except OSError:
            pass
        return text

    def put(self, key: str, text: str) -> None:
        if self.dir is None or self._broken:
            return
        data = (json.dumps({"text": text}, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        if len(data) > self.max_entry_bytes:
            return
        path = self._path(key)
        with self._lock:
            try:
                if self._size is None:
                    self._size = sum(size for _, size, _ in self._entries())
                if self._size + len(data) > self.max_bytes:
                    self._evict(int(self.max_bytes * self.LOW_WATER) - len(data))
                old = path.stat().st_size if path.exists() else 0
                with atomic_open(path, "wb", encoding=None) as f:
                    f.write(data)
                self._size += len(data) - old
            except (OSError, XtmError) as e:      # atomic_open says XtmError for a path it cannot write
                self._broken = True
                logger.warning(f"the LLM answer cache at {self.dir} cannot be written ({type(e).__name__}); "
                               "answers are used but not cached")

    def _entries(self) -> list[tuple[int, int, Path]]:
        """(mtime_ns, size, path) of every file that is one of our entries."""
        assert self.dir is not None
        out = []
        for p in self.dir.glob("[0-9a-f][0-9a-f]/*.json"):
            if _ENTRY_NAME.match(p.name) and p.parent.name == p.name[:2]:
                try:
                    st = p.stat()
                except OSError:
                    continue
                out.append((st.st_mtime_ns, st.st_size, p))
        return out

    def _evict(self, target: int) -> None:
        """Delete least recently used entries until ours total at most `target` bytes."""
        entries = sorted(self._entries(), key=lambda e: (e[0], e[2].name))
        total = sum(size for _, size, _ in entries)
        for _, size, p in entries:
            if total <= max(target, 0):
                break
            try:
                p.unlink()
                total -= size
            except FileNotFoundError:
                total -= size
        self._size = total


# --------------------------------------------------------------------------------------------
# Text generators (LLM backends) and the refiner that prompts them
# --------------------------------------------------------------------------------------------


class TextGenerator(Protocol):
    id: str

    def generate(self, prompts: list[str], rounds: int, sampling: Sampling,
                 stats: StepStats) -> list[list[str | None]]:
        """R answers per prompt (None where a request failed for good)."""
        ...


class LLMRefiner:
    """Prompts a text generator (with the answer cache in front) and parses its answers."""

    def __init__(self, generator: TextGenerator, matcher: VocabMatcher, n_words: int = N_WORDS,
                 sampling: Sampling | None = None, cache: AnswerCache | None = None) -> None:
        self.generator = generator
        self.name = generator.id
        self.matcher = matcher
        self.n_words = n_words
        self.sampling = sampling or Sampling()
        self.cache = cache or AnswerCache(None)

    def refine(self, topics: list[TopicWords], rounds: int) -> tuple[list[list[ParsedAnswer]], StepStats]:
        stats = StepStats()
        t0 = time.perf_counter()
        prompts = [build_prompt(t, self.matcher.langs, self.n_words) for t in topics]
        keys = [[AnswerCache.key(self.generator.id, p, r, self.sampling) for r in range(rounds)] for p in prompts]
        answers: list[list[ParsedAnswer | None]] = [[self._cached(k, stats) for k in ks] for ks in keys]
        todo = [i for i, row in enumerate(answers) if any(a is None for a in row)]
        if todo and hasattr(self.generator, "generate_jobs"):
            # One request per missing (topic, round): a cached round is never asked again. Each answer is
            # parsed and cached as it arrives, so a refinement stopped half-way (Ctrl-C) keeps what came.
            missing = [(i, r) for i in todo for r in range(rounds) if answers[i][r] is None]
            one_at_a_time = threading.Lock()  # the parser's stemmer is not promised to be thread-safe

            def arrived(job: int, text: str | None) -> None:
                i, r = missing[job]
                with one_at_a_time:
                    answers[i][r] = self._fresh(keys[i][r], text, stats)

            self.generator.generate_jobs([(prompts[i], r) for i, r in missing], self.sampling, stats,
                                         on_answer=arrived)
        elif todo:
            fresh = self.generator.generate([prompts[i] for i in todo], rounds, self.sampling, stats)
            for i, texts in zip(todo, fresh, strict=True):
                for r, text in enumerate(texts):
                    if answers[i][r] is None:
                        answers[i][r] = self._fresh(keys[i][r], text, stats)
        parsed = [[a if a is not None else self._parse(None) for a in row] for row in answers]
        stats.seconds = time.perf_counter() - t0
        return parsed, stats

    def _parse(self, text: str | None) -> ParsedAnswer:
        return parse_answer(text, self.matcher, max_words=2 * self.n_words)

    def _cached(self, key: str, stats: StepStats) -> ParsedAnswer | None:
        """A usable cached answer, or None (a miss). An unusable entry, which older versions wrote,
        is a miss too: one empty answer must not cost every later run with the same model."""
        text = self.cache.get(key)
        if text is None:
            return None
        answer = self._parse(text)
        if not answer.usable:
            stats.add(stale_cache=1)
            return None
        stats.add(cache_hits=1)
        return answer

    def _fresh(self, key: str, text: Any, stats: StepStats) -> ParsedAnswer:
        """Parse a new answer; cache it only when usable, so the next run asks again otherwise."""
        if not isinstance(text, str):
            stats.add(failures=1)
            return self._parse(None)
        answer = self._parse(text)
        if answer.usable:
            self.cache.put(key, text)
        else:
            stats.add(unusable=1)
        return answer


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


class _WatchedHTTPConnection(http.client.HTTPConnection):
    """HTTP whose socket is handed to `on_socket` (the deadline watchdog) as soon as it exists."""

    on_socket: Callable[[socket.socket], None]

    def connect(self) -> None:
        super().connect()
        self.on_socket(self.sock)


class _WatchedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS whose TLS socket reaches the watchdog before the handshake, so a dripping handshake
    is cut at the deadline too (HTTPSConnection.connect without tunnels, handshake made explicit)."""

    on_socket: Callable[[socket.socket], None]

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
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
    return content, out.get("usage")


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
        self._key = self._read_key(api_key_env)
        self.concurrency = max(1, int(concurrency))
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.max_retry_wait = float(max_retry_wait)
        self.max_response_bytes = int(max_response_bytes)

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

    @staticmethod
    def _read_key(api_key_env: str) -> str | None:
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

        conn = cls(parts.hostname or "", parts.port, timeout=remaining)
        conn.on_socket = on_socket
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
            raise _TransientError(type(e).__name__) from None
        finally:
            watchdog.cancel()
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
        target = urljoin(url, location.strip())
        try:
            origin = _origin(urlsplit(target))
        except ValueError:
            origin = ("?", "?", 0)
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
            if attempt < self.retries:
                if give_up is None:
                    time.sleep(self._wait(attempt, retry_after))
                elif give_up.wait(self._wait(attempt, retry_after)):
                    return None  # the refinement was stopped: no warning, nothing more to ask
        logger.warning(f"LLM request failed after {attempt + 1} attempts ({reason}); "
                       "the topic keeps its last refined set")
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
            text = self._one(prompt, r, sampling, stats, give_up)
            if on_answer is not None:
                on_answer(index, text)
            return text

        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = [pool.submit(one, index, prompt, r) for index, (prompt, r) in enumerate(jobs)]
            return [fut.result() for fut in futures]
        except BaseException:
            give_up.set()  # Ctrl-C or a fatal answer: wait for no more than the attempts already under way
            raise
        finally:
            # A fatal error (wrong key, redirect elsewhere) stops the step without sending the rest.
            pool.shutdown(wait=True, cancel_futures=True)


class VLLMGenerator:
    """In-process vLLM: every topic of a step in one batched `chat` call, n = R samples each.

    GPU only in practice; vLLM is imported here and nowhere else, so nothing else needs it.
    `engine` may be passed in (tests use a stand-in named FakeVLLMEngine, because no GPU is
    reachable there); otherwise `vllm.LLM(model, **engine_kwargs)` is built on first use.
    """

    def __init__(self, model: str, engine: Any = None, **engine_kwargs: Any) -> None:
        self.model = model
        self.id = f"vllm:{model}"
        self._engine = engine
        self._engine_kwargs = engine_kwargs

    def _llm(self) -> Any:
        if self._engine is None:
            try:
                from vllm import LLM
            except ImportError as e:
                raise XtmError("--refiner vllm needs vLLM (`pip install 'xtm[vllm]'`, Linux + CUDA GPU); "
                               "without a GPU use --refiner openai with any OpenAI-compatible server, "
                               "or --refiner embedding") from e
            self._engine = LLM(model=self.model, **self._engine_kwargs)
        return self._engine

    @staticmethod
    def sampling_params(rounds: int, sampling: Sampling) -> Any:
        try:
            from vllm import SamplingParams
        except ImportError:
            return {"n": rounds, "temperature": sampling.temperature, "top_p": sampling.top_p,
                    "max_tokens": sampling.max_tokens, "seed": sampling.seed}
        return SamplingParams(n=rounds, temperature=sampling.temperature, top_p=sampling.top_p,
                              max_tokens=sampling.max_tokens, seed=sampling.seed)

    def generate(self, prompts: list[str], rounds: int, sampling: Sampling,
                 stats: StepStats) -> list[list[str | None]]:
        llm = self._llm()
        conversations = [[{"role": "user", "content": p}] for p in prompts]
        stats.add(calls=1)
        outputs = llm.chat(conversations, self.sampling_params(rounds, sampling), use_tqdm=False)
        result: list[list[str | None]] = []
        for req in outputs:
            stats.add(prompt_tokens=len(getattr(req, "prompt_token_ids", None) or []))
            texts: list[str | None] = []
            for o in req.outputs[:rounds]:
                stats.add(completion_tokens=len(getattr(o, "token_ids", None) or []))
                texts.append(o.text)
            result.append(texts + [None] * (rounds - len(texts)))
        return result


class TransformersGenerator:
    """A small local chat model through transformers (a directory, hub name, or a .gguf file)."""

    def __init__(self, model: str, device: str = "cpu") -> None:
        self.model_name = model
        self.id = f"transformers:{Path(model).name}"
        self.device = device
        self._tok: Any = None
        self._lm: Any = None

    def _where(self) -> tuple[str, dict[str, Any]]:
        """What from_pretrained takes: a directory or hub name, or a .gguf file's directory and name."""
        path = Path(self.model_name)
        if path.suffix == ".gguf":
            return str(path.parent), {"gguf_file": path.name}
        return self.model_name, {}

    def _transformers(self) -> Any:
        try:
            import transformers
        except ImportError as e:
            raise XtmError("--refiner transformers needs `pip install transformers` (and `gguf` for "
                           ".gguf files)") from e
        return transformers

    def _cannot_load(self, e: Exception) -> XtmError:
        return XtmError(f"--llm-model '{self.model_name}' cannot be loaded by transformers: {exception_text(e)}")

    def check(self) -> TransformersGenerator:
        """Read the model's configuration only (make_refiner does, so a wrong --llm-model stops a run before
        phase 1, not after it); the weights load at the first answer not in the cache, so they take no
        memory during phase 1, and a run whose answers are all cached never loads them."""
        transformers = self._transformers()
        where, kw = self._where()
        try:
            transformers.AutoConfig.from_pretrained(where, **kw)
        except Exception as e:  # OSError, ValueError, JSONDecodeError, ...: transformers raises many kinds
            raise self._cannot_load(e) from None
        return self

    def _load(self) -> None:
        if self._lm is not None:
            return
        transformers = self._transformers()
        where, kw = self._where()
        try:
            self._tok = transformers.AutoTokenizer.from_pretrained(where, **kw)
            self._lm = transformers.AutoModelForCausalLM.from_pretrained(where, **kw).to(self.device).eval()
        except Exception as e:
            raise self._cannot_load(e) from None

    def generate(self, prompts: list[str], rounds: int, sampling: Sampling,
                 stats: StepStats) -> list[list[str | None]]:
        import torch

        self._load()
        # Temperature 0 is greedy decoding (transformers refuses do_sample with it): one answer per
        # prompt, the same for every round, as a server answers a greedy request.
        greedy = sampling.temperature <= 0
        out: list[list[str | None]] = []
        for i, prompt in enumerate(prompts):
            ids = self._tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True).to(self.device)
            torch.manual_seed(sampling.seed + i)
            stats.add(calls=1, prompt_tokens=int(ids["input_ids"].shape[1]))
            with torch.no_grad():
                how = {"do_sample": False} if greedy else {
                    "do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
                    "num_return_sequences": rounds}
                gen = self._lm.generate(**ids, **how, max_new_tokens=sampling.max_tokens,
                                        pad_token_id=self._tok.eos_token_id)
            new = gen[:, ids["input_ids"].shape[1]:]
            stats.add(completion_tokens=int((new != self._tok.eos_token_id).sum()))
            texts = [self._tok.decode(row, skip_special_tokens=True) for row in new]
            out.append(texts * rounds if greedy else texts)
        return out


# --------------------------------------------------------------------------------------------
# The LLM-free refiner
# --------------------------------------------------------------------------------------------


class EmbeddingRefiner:
    """Refined sets without an LLM, from multilingual word embeddings.

    Per topic and round: resample the topic's candidates (its top-N words in every language)
    with replacement and take the embedding centroid c of the resample. Per language, score
      - the topic's own deeper words (top 4N by beta: grounded in the corpus), and
      - the `neighbours` vocabulary words nearest to the OTHER languages' candidates (the
        cross-lingual coverage an LLM would add)
    by CSLS, 2 cos(w, c) - r(w), where r(w) is w's mean similarity to its 10 nearest topic
    centroids of this step. Without that hubness correction, short tokens that sit close to
    everything in sentence-encoder space ("ie", "nd", "yr") win every topic. Keep the n best.
    Self-consistency voting over the rounds then keeps what the resamples agree on, as it does
    for LLM answers. Deterministic for given candidates (seeded by them).

    exclusive: a word may enter only the refined set of the topic whose centroid it is nearest,
    so the sets are disjoint. An LLM shown every topic as context keeps its answers apart; without
    this the sets share generic words and the MMD pulls the topics together (docs/llm_xtm.md).
    """

    name = "embedding"
    HUB_K = 10

    def __init__(self, vocabs: dict[str, Sequence[str]], word_vectors: dict[str, np.ndarray],
                 n_words: int = N_WORDS, neighbours: int = 30, seed: int = 0,
                 exclusive: bool = _DEFAULT.exclusive) -> None:
        self.langs = list(vocabs)
        self.index = {lang: {w: i for i, w in enumerate(v)} for lang, v in vocabs.items()}
        self.vocabs = {lang: list(v) for lang, v in vocabs.items()}
        self.vectors = {lang: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                        for lang, v in word_vectors.items()}
        self.n_words, self.neighbours = n_words, neighbours
        self.seed, self.exclusive = seed, exclusive

    def _rows(self, lang: str, words: Sequence[str]) -> list[int]:
        return [self.index[lang][w] for w in words if w in self.index[lang]]

    def refine(self, topics: list[TopicWords], rounds: int) -> tuple[list[list[ParsedAnswer]], StepStats]:
        stats = StepStats()
        t0 = time.perf_counter()
        pools = [[(lang, j) for lang in self.langs for j in self._rows(lang, t.words.get(lang, []))] for t in topics]
        centroids = np.stack([self._centroid(pool) for pool in pools])
        hub, home = {}, {}
        for lang in self.langs:
            sims = self.vectors[lang] @ centroids.T                       # [V, K]
            k = min(self.HUB_K, sims.shape[1])
            hub[lang] = np.sort(sims, axis=1)[:, -k:].mean(1)
            home[lang] = sims.argmax(1) if self.exclusive else None     # each word's nearest topic
        out = []
        for position, (topic, pool) in enumerate(zip(topics, pools, strict=True)):
            # Seeded by the candidates themselves: the same model state gives the same answers,
            # so a resumed run refines exactly as the uninterrupted one would.
            digest = hashlib.sha256(json.dumps([topic.topic, topic.words], ensure_ascii=False).encode()).digest()
            rng = np.random.default_rng([self.seed, int.from_bytes(digest[:8], "little")])
            allowed = {lang: None if home[lang] is None else home[lang] == position for lang in self.langs}
            answers = []
            for _ in range(rounds):
                if not pool:
                    answers.append(ParsedAnswer(words={lang: [] for lang in self.langs}))
                    continue
                sample = [pool[j] for j in rng.integers(0, len(pool), size=len(pool))]
                c = self._centroid(sample)
                answers.append(ParsedAnswer(words={lang: self._best(lang, c, sample, topic, hub[lang], allowed[lang])
                                                   for lang in self.langs}))
            out.append(answers)
        stats.seconds = time.perf_counter() - t0
        return out, stats

    def _centroid(self, pool: Sequence[tuple[str, int]]) -> np.ndarray:
        d = next(iter(self.vectors.values())).shape[1]
        if not pool:
            return np.zeros(d, np.float32)
        c = np.mean([self.vectors[lang][j] for lang, j in pool], axis=0)
        return c / max(float(np.linalg.norm(c)), 1e-12)

    def _best(self, lang: str, c: np.ndarray, sample: Sequence[tuple[str, int]], topic: TopicWords,
              hub: np.ndarray, allowed: np.ndarray | None = None) -> list[str]:
        own = self._rows(lang, (topic.more or topic.words).get(lang, []))
        cand = set(own)
        others = [j for x, j in sample if x != lang]
        if others and self.neighbours:
            other_c = self._centroid([(x, j) for x, j in sample if x != lang])
            csls_other = 2 * (self.vectors[lang] @ other_c) - hub
            cand |= set(np.argpartition(-csls_other, min(self.neighbours, len(hub) - 1))[: self.neighbours].tolist())
        rows = np.fromiter(cand, dtype=np.int64)
        if allowed is not None:
            rows = rows[allowed[rows]]
        if not rows.size:
            return []
        score = 2 * (self.vectors[lang][rows] @ c) - hub[rows]
        order = np.lexsort((rows, -score))[: self.n_words]
        return [self.vocabs[lang][int(rows[i])] for i in order]


# --------------------------------------------------------------------------------------------
# Construction from CLI settings
# --------------------------------------------------------------------------------------------


def make_refiner(cfg: RefinerConfig, vocabs: dict[str, Sequence[str]],
                 word_vectors: Callable[[], dict[str, np.ndarray]], n_words: int,
                 cache_dir: Path | None, seed: int = 0) -> Refiner:
    """The refiner a run asked for; `word_vectors` is called only by the embedding refiner."""
    if cfg.backend == "embedding":
        return EmbeddingRefiner(vocabs, word_vectors(), n_words=n_words, seed=seed, exclusive=cfg.exclusive)
    generator: TextGenerator
    if cfg.backend == "openai":
        generator = OpenAICompatibleGenerator(cfg.llm_url or "", cfg.llm_model or "", api_key_env=cfg.api_key_env,
                                              concurrency=cfg.concurrency, timeout=cfg.timeout, retries=cfg.retries)
    elif cfg.backend == "vllm":
        if not cfg.llm_model:
            raise XtmError("--refiner vllm needs --llm-model (a hub name or local path vLLM can load)")
        generator = VLLMGenerator(cfg.llm_model)
    elif cfg.backend == "transformers":
        if not cfg.llm_model:
            raise XtmError("--refiner transformers needs --llm-model (a local directory, hub name or .gguf file)")
        generator = TransformersGenerator(cfg.llm_model).check()
    else:
        raise XtmError(f"unknown refiner '{cfg.backend}': choose one of {', '.join(REFINER_NAMES)}")
    return LLMRefiner(generator, VocabMatcher(vocabs), n_words=n_words, sampling=cfg.sampling,
                      cache=AnswerCache(cache_dir))
