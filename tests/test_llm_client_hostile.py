"""The OpenAI-compatible LLM client against a hostile world (issue 13, items 9-12).

Every test talks to a real HTTP server on 127.0.0.1 (`adversarial_llm_server.py`) that misbehaves
on purpose: cross-origin redirects, wrong-shaped JSON, truncated bodies, a slow drip, 429 with
Retry-After, 36 MB answers, empty answers, a server echoing the key. What must hold: the key never
leaves its origin nor shows in logs, errors or the cache; a bad answer is counted and unusable,
never a crash and never cached; every request costs at most about --llm-timeout; the cache is bounded.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from adversarial_llm_server import SHAPES, USAGES, AdversarialLLMServer, DripTLSServer, wait_until
from command_logging import train_stderr  # noqa: F401  (a fixture)

from xtm.config import LabelConfig, RefinerConfig, Sampling
from xtm.errors import XtmError
from xtm.trainer.phase2.answer_cache import AnswerCache
from xtm.trainer.phase2.answer_parser import VocabMatcher
from xtm.trainer.phase2.llm_http import OpenAICompatibleGenerator
from xtm.trainer.phase2.objective import vote
from xtm.trainer.phase2.prompt import TopicWords, build_prompt
from xtm.trainer.phase2.refiners import LLMRefiner

# The client logs its warnings; stderr shows them as xtm-train does, which is what "not in the log" means.
pytestmark = pytest.mark.usefixtures("train_stderr")

VOCABS = {"en": ["player", "team", "market", "profit"], "zh": ["球员", "球队", "市场", "利润"]}
TOPIC = TopicWords(0, {"en": ["player", "team"], "zh": ["球员", "球队"]})
KEY = "sk-hostile-test-0123456789"
SAMPLING = Sampling(max_tokens=50, seed=3)


@pytest.fixture
def servers():
    made: list[AdversarialLLMServer] = []

    def make(*script: str, **kw) -> AdversarialLLMServer:
        made.append(AdversarialLLMServer(script, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


@pytest.fixture
def key(monkeypatch) -> str:
    monkeypatch.setenv("XTM_HOSTILE_KEY", KEY)
    return KEY


def refiner(url: str, cache_dir: Path | None, sampling: Sampling = SAMPLING, **kw) -> LLMRefiner:
    kw.setdefault("retries", 0)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    kw.setdefault("concurrency", 1)
    gen = OpenAICompatibleGenerator(url, "hostile-model", api_key_env="XTM_HOSTILE_KEY", **kw)
    return LLMRefiner(gen, VocabMatcher(VOCABS), n_words=5, sampling=sampling, cache=AnswerCache(cache_dir))


def cache_files(cache_dir: Path) -> list[Path]:
    return [p for p in cache_dir.rglob("*") if p.is_file()]


def no_key_anywhere(cache_dir: Path, captured: str) -> None:
    assert KEY not in captured
    for p in cache_files(cache_dir):
        assert KEY.encode() not in p.read_bytes(), p


# ---- 9. the key never leaves its origin -------------------------------------------------------


def test_cross_origin_redirect_is_refused_and_the_other_origin_never_sees_the_key(servers, key, tmp_path,
                                                                                 capsys) -> None:
    elsewhere = servers()
    s = servers("redirect", redirect_to=elsewhere.url + "/chat/completions")
    with pytest.raises(XtmError, match="another origin") as err:
        refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert s.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"     # its own origin gets the key
    assert elsewhere.requests == []                                         # the other one gets nothing
    assert elsewhere.origin in str(err.value) and KEY not in str(err.value)
    no_key_anywhere(tmp_path, capsys.readouterr().err)


def test_redirect_to_another_port_of_the_same_host_is_another_origin(servers, key, tmp_path) -> None:
    elsewhere = servers()
    s = servers("redirect", redirect_to=elsewhere.origin.replace("127.0.0.1", "localhost") + "/v1")
    with pytest.raises(XtmError, match="another origin"):
        refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert elsewhere.requests == []


def test_same_origin_redirect_is_followed_with_the_same_request(servers, key, tmp_path) -> None:
    s = servers("redirect_same")
    answers, stats = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert answers[0][0].usable and stats.failures == 0
    assert [r["path"] for r in s.requests] == ["/v1/chat/completions", "/moved/v1/chat/completions"]
    assert s.requests[1]["method"] == "POST" and s.requests[1]["body"] == s.requests[0]["body"]
    assert s.requests[1]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_a_redirect_loop_stops_with_a_clear_error(servers, key, tmp_path) -> None:
    s = servers(default="redirect_same")
    with pytest.raises(XtmError, match="redirected more than"):
        refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert len(s.requests) <= 4


def test_a_key_echoed_by_the_server_never_reaches_the_error_or_the_log(servers, key, tmp_path, capsys) -> None:
    s = servers("echo_key")
    with pytest.raises(XtmError, match="HTTP 401") as err:
        refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert KEY not in str(err.value) and "sk-hostile" not in str(err.value)
    no_key_anywhere(tmp_path, capsys.readouterr().err)


def test_the_key_is_in_no_log_line_and_no_cache_file(servers, key, tmp_path, capsys) -> None:
    s = servers("status:500", "status:502", "shape:list", "truncated", "good")
    answers, stats = refiner(s.url, tmp_path, retries=5).refine([TOPIC], rounds=1)
    assert answers[0][0].usable and stats.calls == 5
    s2 = servers(default="status:500")
    refiner(s2.url, tmp_path, retries=1).refine([TopicWords(1, {"en": ["market"], "zh": []})], rounds=1)
    err = capsys.readouterr().err
    assert "failed after 2 attempts" in err
    assert cache_files(tmp_path)
    no_key_anywhere(tmp_path, err)


def test_a_key_with_control_characters_is_refused_without_echoing_it(monkeypatch) -> None:
    monkeypatch.setenv("XTM_HOSTILE_KEY", "sk-abc\r\nX-Injected: 1")
    with pytest.raises(XtmError, match="XTM_HOSTILE_KEY") as err:
        OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "m", api_key_env="XTM_HOSTILE_KEY")
    assert "sk-abc" not in str(err.value) and "Injected" not in str(err.value)


CREDENTIAL_URLS = ["http://127.0.0.1:8000/v1?api_key=SECRET-1", "http://127.0.0.1:8000/v1?api-version=1&key=SECRET-1",
                   "http://h/v1?access_token=SECRET-1", "http://h/v1?X-Amz-Signature=SECRET-1", "http://h/v1?sk-SECRET-1",
                   "http://h/v1?a=1;auth=SECRET-1", "http://user:SECRET-1@h/v1", "http://[::1/v1?SECRET-1",
                   "https://f.azurewebsites.net/api/v1?code=SECRET-1", "http://h/v1?k%65y=SECRET-1", "http://h/v1?=SECRET-1",
                   "http://h/v1#SECRET-1", "http://h/v1?subscription-key=SECRET-1", "http://h/v1?accessToken=SECRET-1"]


@pytest.mark.parametrize("url", CREDENTIAL_URLS)
def test_a_credential_in_the_url_is_refused_by_every_config_without_echoing_it(url) -> None:
    """Found by a review: `--llm-url 'http://host/v1?api_key=K'` went into config.json, every checkpoint,
    metrics.json and the HTML report (the client hid only its own messages' query strings)."""
    for make in (lambda: RefinerConfig(backend="openai", llm_url=url, llm_model="m"),
                 lambda: LabelConfig(backend="openai", llm_url=url, llm_model="m"),
                 lambda: OpenAICompatibleGenerator(url, "m")):
        with pytest.raises(XtmError, match="--llm-url") as err:
            make()
        assert "SECRET-1" not in str(err.value)


def test_query_parameters_that_name_no_credential_are_kept() -> None:
    for url in ("https://x.openai.azure.com/openai/deployments/d?api-version=2024-06-01", "http://h/v1?passthrough=1",
                "http://h/v1?session_affinity=a", "http://127.0.0.1:11434/v1", "https://openrouter.ai/api/v1"):
        assert RefinerConfig(backend="openai", llm_url=url, llm_model="m").llm_url == url


def test_a_checkpoint_that_recorded_a_credential_url_still_resumes_with_a_clean_one() -> None:
    """Runs checkpointed before the refusal hold the old URL; it is a serving setting a resume replaces, so it
    is dropped when the checkpoint's settings are read, not refused (the resume named the new --llm-url)."""
    from xtm.config import Phase2Config
    from xtm.trainer.loop.phase2_resume import phase2_differences

    now = Phase2Config(refiner=RefinerConfig(backend="openai", llm_url="https://gw.example/v1", llm_model="m"))
    saved = now.to_dict()
    saved["refiner"]["llm_url"] = "https://gw.example/v1?api_key=SECRET-1"
    assert Phase2Config.from_dict(saved).refiner.llm_url is None
    assert phase2_differences(saved, now) == []
    saved["refiner"]["llm_url"] = 5  # a hand-edited checkpoint: was an AttributeError traceback from urllib
    assert Phase2Config.from_dict(saved).refiner.llm_url is None
    with pytest.raises(XtmError, match="--llm-url must be a URL"):
        RefinerConfig(backend="openai", llm_url=5, llm_model="m")  # type: ignore[arg-type]


def test_a_query_string_that_is_no_credential_reaches_the_server_after_the_path(servers, tmp_path) -> None:
    """A gateway's api-version=... is kept, after the path (it was mangled: /v1?api-version=1/v1/chat/completions)."""
    s = servers()
    answers, _ = refiner(s.url + "?api-version=2024-06-01", tmp_path).refine([TOPIC], rounds=1)
    assert answers[0][0].usable and [r["path"] for r in s.requests] == ["/v1/chat/completions?api-version=2024-06-01"]
    with pytest.raises(XtmError, match="invalid port") as err:  # messages show no query string
        OpenAICompatibleGenerator("http://127.0.0.1:99999/v1?api-version=QUERY-WORD", "m")
    assert "QUERY-WORD" not in str(err.value)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/v1", "127.0.0.1:8000/v1"])
def test_only_http_urls_are_accepted(url) -> None:
    with pytest.raises(XtmError, match="--llm-url"):
        OpenAICompatibleGenerator(url, "m")


# ---- 10. wrong shapes, truncation, absurd counts: counted, unusable, never a crash ---------------


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_wrong_shaped_json_is_an_unusable_answer_never_a_crash_and_never_cached(servers, tmp_path, shape) -> None:
    s = servers(f"shape:{shape}")
    answers, stats = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert not answers[0][0].usable and stats.bad_answers == 1 and stats.failures == 1
    assert vote(answers[0], list(VOCABS), 5) is None            # phase 2: the topic keeps its last set
    assert cache_files(tmp_path) == []
    again, stats2 = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert again[0][0].usable and stats2.calls == 1 and stats2.cache_hits == 0


def test_a_truncated_body_is_an_unusable_answer_and_is_retried(servers, tmp_path) -> None:
    s = servers("truncated")
    answers, stats = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert not answers[0][0].usable and stats.bad_answers == 1 and cache_files(tmp_path) == []
    s2 = servers("truncated", "good")
    answers, stats = refiner(s2.url, tmp_path, retries=1).refine([TOPIC], rounds=1)
    assert answers[0][0].usable and stats.calls == 2 and stats.bad_answers == 1


@pytest.mark.parametrize("mode", ["header_flood", "garbage_status"])
def test_a_server_that_does_not_speak_http_is_a_failed_request_never_a_crash(servers, tmp_path, mode) -> None:
    s = servers(default=mode)
    answers, stats = refiner(s.url, tmp_path, retries=1).refine([TOPIC], rounds=1)
    assert not answers[0][0].usable and stats.failures == 1 and stats.calls == 2 and cache_files(tmp_path) == []


def test_a_request_the_server_rejects_as_malformed_is_not_retried(servers, tmp_path, capsys) -> None:
    s = servers(default="status:400")
    r = refiner(s.url, tmp_path, retries=4, backoff=1.0)
    t0 = time.monotonic()
    answers, stats = r.refine([TOPIC], rounds=1)
    assert not answers[0][0].usable and stats.calls == 1 and len(s.requests) == 1
    assert time.monotonic() - t0 < 1.0 and "HTTP 400" in capsys.readouterr().err


def test_a_fatal_answer_stops_the_step_without_sending_the_other_requests(servers, key, tmp_path) -> None:
    s = servers("status:401", default="good")
    topics = [TopicWords(k, {"en": ["player"], "zh": [str(k)]}) for k in range(20)]
    with pytest.raises(XtmError, match="HTTP 401"):
        refiner(s.url, tmp_path).refine(topics, rounds=2)
    assert len(s.requests) < 40


def test_a_fatal_answer_stops_the_requests_queued_behind_a_slow_one(servers, key, tmp_path) -> None:
    """Results were awaited in order: while the first request was slow, the free worker sent every other request
    with the rejected key (all 250 of phase 2's defaults) before the 401 stopped anything."""
    s = servers("slow:2", default="status:401")
    topics = [TopicWords(k, {"en": ["player"], "zh": [str(k)]}) for k in range(20)]
    with pytest.raises(XtmError, match="HTTP 401"):
        refiner(s.url, tmp_path, concurrency=2).refine(topics, rounds=2)
    assert len(s.requests) <= 3  # the slow one, the 401, at most one the other worker had already begun


def test_a_malformed_redirect_location_is_an_error_not_a_traceback(servers, key, tmp_path) -> None:
    """`Location: http://[oops/` raised ValueError from urljoin, outside every handler: xtm-train died after
    phase 1 with a traceback."""
    s = servers("redirect", redirect_to="http://[oops/")
    with pytest.raises(XtmError, match="another origin"):
        refiner(s.url, tmp_path).refine([TOPIC], rounds=1)


def test_an_answer_with_a_lone_surrogate_is_used_and_cached_never_a_crash(servers, tmp_path) -> None:
    """JSON's "\\ud800" decodes to a lone surrogate, which UTF-8 cannot encode: caching the answer crashed
    xtm-train and xtm-label with a UnicodeEncodeError traceback."""
    s = servers(answer="Topic 0: sport\nEN: player - team - \ud800\nZH: 球员 - 球队")
    answers, stats = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert answers[0][0].usable and answers[0][0].words["en"][:2] == ["player", "team"]
    (entry,) = cache_files(tmp_path)
    assert "\ufffd" in json.loads(entry.read_text(encoding="utf-8"))["text"]
    again, stats = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)  # served from the cache
    assert stats.calls == 0 and again[0][0].words == answers[0][0].words


def test_two_servers_given_the_same_model_name_do_not_share_cached_answers(servers, tmp_path) -> None:
    """The cache was keyed by the model name only: a second server (llama.cpp ignores the name; "local" is a
    common one) was never asked, and its run used the first server's answers."""
    first, second = servers(), servers(answer="Topic 0: money\nEN: market - profit\nZH: 市场 - 利润")
    refiner(first.url, tmp_path).refine([TOPIC], rounds=1)
    answers, stats = refiner(second.url, tmp_path).refine([TOPIC], rounds=1)
    assert stats.calls == 1 and len(second.requests) == 1 and answers[0][0].words["en"] == ["market", "profit"]


@pytest.mark.parametrize("value", ["sk-proj-LIVEKEY1234567890abcdef", "AIzaSyD4f8Xk2LmQ9wR7tV3bN6", "OPENAI KEY", "",
                                   "X" * 65])
def test_a_key_passed_as_the_variable_name_is_refused_before_it_is_recorded(value: str) -> None:
    """--llm-api-key-env "sk-..." was taken as a variable name: the key went into config.json, every checkpoint,
    metrics.json and report.html, and the run went on without a key."""
    for make in (lambda: RefinerConfig(api_key_env=value), lambda: LabelConfig(api_key_env=value),
                 lambda: OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "m", api_key_env=value)):
        with pytest.raises(XtmError, match="NAME of the environment variable") as err:
            make()
        assert not value or value not in str(err.value)


def test_a_checkpoint_that_recorded_a_key_as_the_variable_name_still_resumes() -> None:
    """Runs checkpointed before the refusal hold the pasted key as api_key_env; it is a serving setting the
    resume replaces, so it is dropped when the checkpoint's settings are read, not refused."""
    from xtm.config import Phase2Config
    from xtm.trainer.loop.phase2_resume import phase2_differences

    now = Phase2Config(refiner=RefinerConfig(backend="openai", llm_url="https://gw.example/v1", llm_model="m"))
    saved = now.to_dict()
    saved["refiner"]["api_key_env"] = "sk-proj-LIVEKEY1234567890abcdef"
    assert Phase2Config.from_dict(saved).refiner.api_key_env == "OPENAI_API_KEY"
    assert phase2_differences(saved, now) == []


def test_a_named_key_variable_that_is_not_set_is_a_warning(monkeypatch, capsys) -> None:
    monkeypatch.delenv("XTM_UNSET_KEY_VAR", raising=False)
    for name in ("OPENAI_API_KEY", "AZURE_OPENAI_KEY_2", "my_llm_key", "AzureOpenAI_Key_2024", "OpenRouter_API_Key_1",
                 "DeepSeek_V3_API_Token"):
        RefinerConfig(api_key_env=name)  # variable names, whatever their case
    OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "m", api_key_env="XTM_UNSET_KEY_VAR")
    assert "XTM_UNSET_KEY_VAR: that variable is not set" in capsys.readouterr().err


@pytest.mark.parametrize("usage", sorted(USAGES))
def test_absurd_token_counts_are_ignored_and_counted_never_a_crash(servers, tmp_path, usage) -> None:
    s = servers(usage)
    answers, stats = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert answers[0][0].usable                                  # the words themselves are fine
    assert stats.ignored_usage == 1
    assert 0 <= stats.prompt_tokens <= 10**6 and 0 <= stats.completion_tokens <= 10**6
    assert isinstance(stats.prompt_tokens, int) and isinstance(stats.completion_tokens, int)
    json.dumps(stats.to_dict(), allow_nan=False)                 # metrics.json stays valid JSON


# ---- 11. deadlines, Retry-After, size caps -----------------------------------------------------


@pytest.mark.parametrize("mode", ["drip", "drip_headers"])
def test_a_slow_drip_costs_at_most_the_timeout_per_attempt(servers, tmp_path, mode) -> None:
    s = servers(default=mode, drip_interval=0.05)                 # ~300 bytes: 15 s to send in full
    r = refiner(s.url, tmp_path, timeout=1.0, retries=1)
    t0 = time.monotonic()
    answers, stats = r.refine([TOPIC], rounds=1)
    elapsed = time.monotonic() - t0
    assert not answers[0][0].usable and stats.calls == 2 and stats.failures == 1 and stats.bad_answers == 0
    assert 2.0 <= elapsed < 3.5, elapsed                          # 2 attempts x 1 s deadline + backoff


@pytest.fixture
def self_signed(tmp_path, monkeypatch) -> tuple[str, str]:
    """A certificate for 127.0.0.1 made with the openssl CLI, trusted through SSL_CERT_FILE."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    return str(cert), str(key)


def test_https_answers_and_a_dripping_https_answer_is_cut_at_the_deadline(servers, self_signed, tmp_path,
                                                                          capsys) -> None:
    s = servers("good", "drip", drip_interval=0.05, tls=self_signed)
    assert s.url.startswith("https://")
    answers, _ = refiner(s.url, tmp_path / "a", timeout=5.0).refine([TOPIC], rounds=1)
    assert answers[0][0].usable
    r = refiner(s.url, tmp_path / "b", timeout=1.0)
    t0 = time.monotonic()
    answers, stats = r.refine([TOPIC], rounds=1)
    assert not answers[0][0].usable and stats.failures == 1 and stats.bad_answers == 0
    assert 1.0 <= time.monotonic() - t0 < 2.0
    assert "within 1s" in capsys.readouterr().err


def test_a_tls_handshake_that_drips_costs_at_most_the_timeout(tmp_path) -> None:
    with DripTLSServer(interval=0.05) as s:
        r = refiner(s.url, tmp_path, timeout=1.0)
        t0 = time.monotonic()
        answers, stats = r.refine([TOPIC], rounds=1)
        elapsed = time.monotonic() - t0
    assert not answers[0][0].usable and stats.failures == 1 and s.connections == 1
    assert 1.0 <= elapsed < 2.0, elapsed


def test_retry_after_is_honoured(servers, tmp_path) -> None:
    s = servers("retry_after", "good", retry_after="1")
    r = refiner(s.url, tmp_path, retries=2)
    t0 = time.monotonic()
    answers, stats = r.refine([TOPIC], rounds=1)
    elapsed = time.monotonic() - t0
    assert answers[0][0].usable and stats.calls == 2
    assert 0.95 <= elapsed < 2.5, elapsed                         # backoff alone would be 0.01 s


def test_retry_after_as_an_http_date_is_honoured(servers, tmp_path) -> None:
    from email.utils import formatdate

    s = servers("unavailable", "good", retry_after=formatdate(time.time() + 2, usegmt=True))
    r = refiner(s.url, tmp_path, retries=1)
    t0 = time.monotonic()
    answers, _ = r.refine([TOPIC], rounds=1)
    assert answers[0][0].usable and 0.9 <= time.monotonic() - t0 < 3.5


def test_retry_after_is_bounded(servers, tmp_path) -> None:
    s = servers("retry_after", "unavailable", "good", retry_after="86400")
    r = refiner(s.url, tmp_path, retries=2, max_retry_wait=0.5)
    t0 = time.monotonic()
    answers, stats = r.refine([TOPIC], rounds=1)
    elapsed = time.monotonic() - t0
    assert answers[0][0].usable and stats.calls == 3
    assert 0.95 <= elapsed < 2.5, elapsed                         # 2 waits capped at 0.5 s, not a day


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "1e999"])
def test_a_garbage_retry_after_falls_back_to_backoff(servers, tmp_path, value) -> None:
    s = servers("retry_after", "good", retry_after=value)
    r = refiner(s.url, tmp_path, retries=1, max_retry_wait=30)
    t0 = time.monotonic()
    answers, _ = r.refine([TOPIC], rounds=1)
    assert answers[0][0].usable and time.monotonic() - t0 < 1.5


@pytest.mark.parametrize("mode", ["huge", "huge_chunked"])
def test_a_huge_answer_is_refused_without_reading_it_and_never_cached(servers, tmp_path, mode) -> None:
    s = servers(mode)
    r = refiner(s.url, tmp_path)
    t0 = time.monotonic()
    answers, stats = r.refine([TOPIC], rounds=1)
    assert time.monotonic() - t0 < 5
    assert not answers[0][0].usable and stats.bad_answers == 1
    assert sum(p.stat().st_size for p in cache_files(tmp_path)) == 0
    assert wait_until(lambda: s.requests) and s.bytes_sent < 20_000_000     # stopped far before 36 MB


def test_the_size_cap_follows_max_tokens(servers, tmp_path) -> None:
    s = servers("huge", "huge", huge_bytes=200_000)                # about 140 KB of words
    long = Sampling(max_tokens=2000, seed=3)                       # cap 64 KiB + 2000 x 256 B = 576 KiB
    answers, stats = refiner(s.url, tmp_path, long, max_response_bytes=1_000_000).refine([TOPIC], rounds=1)
    assert answers[0][0].usable and stats.bad_answers == 0
    short = Sampling(max_tokens=50, seed=3)                        # cap 64 KiB + 50 x 256 B = 77 KiB
    answers, stats = refiner(s.url, tmp_path, short, max_response_bytes=1_000_000).refine([TOPIC], rounds=1)
    assert not answers[0][0].usable and stats.bad_answers == 1


# ---- 12. unusable answers never poison the cache ----------------------------------------------


def test_an_empty_answer_is_not_cached_so_the_next_run_asks_again(servers, tmp_path) -> None:
    s = servers("empty", "good")
    answers, stats = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert not answers[0][0].usable and stats.unusable == 1 and cache_files(tmp_path) == []
    answers, stats = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert answers[0][0].usable and stats.calls == 1 and stats.cache_hits == 0
    answers, stats = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert answers[0][0].usable and stats.calls == 0 and stats.cache_hits == 1
    assert len(s.requests) == 2


def test_only_the_rounds_missing_from_the_cache_are_asked_again(servers, tmp_path) -> None:
    s = servers("good", "empty", "good", "empty")
    topics = [TOPIC, TopicWords(1, {"en": ["market"], "zh": ["市场"]})]
    _, stats = refiner(s.url, tmp_path).refine(topics, rounds=2)
    assert stats.calls == 4 and stats.unusable == 2
    answers, stats = refiner(s.url, tmp_path).refine(topics, rounds=2)
    assert all(a.usable for row in answers for a in row)
    assert stats.calls == 2 and stats.cache_hits == 2 and len(s.requests) == 6
    assert sorted(r["body"]["seed"] for r in s.requests[4:]) == [SAMPLING.seed + 1] * 2     # the empty rounds


def test_answers_are_cached_as_they_arrive_so_a_stopped_refinement_keeps_them(servers, tmp_path) -> None:
    """Ctrl-C in a refinement (an LLM's answers take minutes) stops it: the answers already given must be in the
    cache then, not only once every request has come back, so that the redo asks only for the rest."""
    import os
    import signal
    import threading

    s = servers("good", "good", "drip", drip_interval=0.05)       # the third answer would take ~15 s
    refiner(s.url, None).refine([TOPIC], rounds=1)                # imports done: the signal lands in the refinement
    topics = [TOPIC, TopicWords(1, {"en": ["market"], "zh": ["市场"]})]
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            refiner(s.url, tmp_path, timeout=2.0).refine(topics, rounds=1)
    finally:
        timer.cancel()
    assert len(cache_files(tmp_path)) == 1                        # the first answer, cached when it came
    answers, stats = refiner(s.url, tmp_path).refine(topics, rounds=1)
    assert all(a.usable for row in answers for a in row) and stats.cache_hits == 1 and stats.calls == 1


def test_a_stopped_refinement_waits_out_no_retry_and_makes_no_new_attempt(servers, tmp_path) -> None:
    """A request waiting to retry (503, Retry-After 5 s, three retries left) when Ctrl-C stops the refinement
    gives up at once instead of holding the command for its retries."""
    import os
    import signal
    import threading

    s = servers("good", default="unavailable", retry_after="5")
    refiner(s.url, None).refine([TOPIC], rounds=1)                # imports done: the signal lands in the refinement
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    t0 = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            refiner(s.url, tmp_path, retries=3).refine([TOPIC], rounds=1)
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 3 and len(s.requests) == 2


@pytest.mark.parametrize("entry", [{"text": ""}, {"text": "no vocabulary word here"}, {"text": 5}, [],
                                   {"words": "player"}, "not json at all", None])
def test_an_unusable_or_corrupt_cache_entry_is_a_miss(servers, tmp_path, entry) -> None:
    s = servers()
    r = refiner(s.url, tmp_path)
    key = AnswerCache.key(r.generator.cache_id, build_prompt(TOPIC, list(VOCABS), 5), 0, SAMPLING)
    path = r.cache._path(key)
    path.parent.mkdir(parents=True)
    path.write_text(entry if isinstance(entry, str) else json.dumps(entry), encoding="utf-8")
    if entry is None:
        path.write_bytes(b"x" * 3_000_000)                       # an oversized planted file
    answers, stats = r.refine([TOPIC], rounds=1)
    assert answers[0][0].usable and stats.calls == 1 and stats.cache_hits == 0 and stats.stale_cache == 1
    assert json.loads(path.read_text(encoding="utf-8"))["text"] == s.answer     # replaced by the good answer


def test_an_unwritable_cache_never_stops_a_refinement(servers, tmp_path, capsys) -> None:
    (tmp_path / "llm-answers").write_text("a file where the cache directory should be")
    s = servers()
    answers, stats = refiner(s.url, tmp_path).refine([TOPIC, TopicWords(1, {"en": ["market"], "zh": []})], rounds=2)
    assert all(a.usable for row in answers for a in row) and stats.calls == 4
    assert capsys.readouterr().err.count("answer cache") == 1              # said once, not per answer


def test_the_cache_directory_is_bounded_oldest_entries_go_first(tmp_path) -> None:
    cache = AnswerCache(tmp_path, max_bytes=20_000)
    text = "EN: player - team\n" + "x" * 900
    for i in range(100):
        cache.put(f"{i:064x}", text)
    total = sum(p.stat().st_size for p in cache_files(tmp_path))
    assert 0 < total <= 20_000
    assert cache.get(f"{99:064x}") == text and cache.get(f"{0:064x}") is None
    (tmp_path / "llm-answers" / "mine.txt").write_text("not an answer: never evicted")
    for i in range(100, 150):
        cache.put(f"{i:064x}", text)
    assert (tmp_path / "llm-answers" / "mine.txt").exists()


def test_an_oversized_answer_is_used_but_not_cached(tmp_path) -> None:
    cache = AnswerCache(tmp_path, max_entry_bytes=1000)
    cache.put("ab" * 32, "EN: player " + "team - " * 500)
    assert cache_files(tmp_path) == []


def test_new_counters_reach_the_step_stats(servers, tmp_path) -> None:
    s = servers("shape:list", "empty", "usage_list", "truncated")
    topics = [TopicWords(k, {"en": ["player"], "zh": [str(k)]}) for k in range(4)]
    _, stats = refiner(s.url, tmp_path).refine(topics, rounds=1)
    d = stats.to_dict()
    assert d["bad_answers"] == 2 and d["unusable"] == 1 and d["ignored_usage"] == 1 and d["failures"] == 2
    assert d["stale_cache"] == 0 and d["calls"] == 4


# ---- a hostile review's findings (2026-12-07) --------------------------------------------------


def test_two_urls_alike_in_their_first_120_characters_or_but_their_query_do_not_share_answers(servers,
                                                                                              tmp_path) -> None:
    """The cache key held the URL as messages show it: cut at 120 characters, without its query. Two gateway
    deployments with long paths (or ?deployment=a / =b) shared one model's answers; the second was never asked."""
    s = servers()
    long_path = "/openai/deployments/" + "x" * 120
    for deployment in ("legal", "medical"):
        answers, stats = refiner(f"{s.origin}{long_path}/{deployment}/v1", tmp_path).refine([TOPIC], rounds=1)
        assert answers[0][0].usable and stats.calls == 1 and stats.cache_hits == 0
    assert [r["path"].split("/")[-4] for r in s.requests] == ["legal", "medical"]
    g1 = OpenAICompatibleGenerator(s.url + "?deployment=a", "m")
    g2 = OpenAICompatibleGenerator(s.url + "?deployment=b", "m")
    assert g1.shown_url == g2.shown_url and g1.cache_id != g2.cache_id


def test_an_ipv6_address_without_a_port_is_asked_on_the_schemes_port(monkeypatch) -> None:
    """http://[::1]/v1 went to host ':' port 1 (http.client read the address's last group as the port), and
    http://[::1:8082]/v1 took the key to port 8082."""
    from xtm.trainer.phase2 import llm_http

    seen: list[tuple[str, int | None]] = []

    def connect(host: str, port: int, timeout: float | None, killed: object) -> None:
        seen.append((host, port))  # where the request would go; nothing is listening there
        raise ConnectionRefusedError

    monkeypatch.setattr(llm_http, "_connect", connect)
    for url, expected in (("http://[::1]/v1", ("::1", 80)), ("http://[::1:8082]/v1", ("::1:8082", 80)),
                          ("http://[::1]:9000/v1", ("::1", 9000))):
        gen = OpenAICompatibleGenerator(url, "m", retries=0, backoff=0.01)
        gen.generate_jobs([("hello", 0)], SAMPLING, __import__("xtm.trainer.phase2.refiners",
                                                                 fromlist=["StepStats"]).StepStats())
        assert seen[-1] == expected, (url, seen[-1])


@pytest.mark.parametrize(("url", "env", "sent"), [
    ("http://10.1.2.3:8000/v1", "OPENAI_API_KEY", False),   # the default variable over plain http elsewhere
    ("http://127.0.0.1:8000/v1", "OPENAI_API_KEY", True),   # this machine
    ("http://localhost:8000/v1", "OPENAI_API_KEY", True),
    ("http://gpu.localhost:8000/v1", "OPENAI_API_KEY", False),  # resolved by mDNS/DNS here: any address
    ("http://[::ffff:127.0.0.1]:8000/v1", "OPENAI_API_KEY", False),
    ("https://10.1.2.3/v1", "OPENAI_API_KEY", True),        # over TLS
    ("http://10.1.2.3:8000/v1", "LAB_VLLM_KEY", True),      # a variable named for this server: as asked
])
def test_the_default_key_variable_is_not_sent_in_cleartext_to_another_host(monkeypatch, capsys, url: str,
                                                                           env: str, sent: bool) -> None:
    """$OPENAI_API_KEY went to any http:// server, a keyless lab server included, in cleartext, unasked."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LAB_VLLM_KEY", KEY)
    gen = OpenAICompatibleGenerator(url, "m", api_key_env=env)
    assert (gen._key == KEY) is sent
    err = capsys.readouterr().err
    assert ("is not sent to" in err) is not sent and KEY not in err


def test_a_certificate_this_machine_does_not_trust_stops_at_once(servers, self_signed, tmp_path,
                                                                 monkeypatch) -> None:
    """A certificate that failed verification was retried as a passing failure (5 attempts, 17 s a request), and
    phase 2 went on without any answer."""
    s = servers(tls=self_signed)
    monkeypatch.delenv("SSL_CERT_FILE")
    r = refiner(s.url, tmp_path, retries=3)
    t0 = time.monotonic()
    with pytest.raises(XtmError, match="TLS certificate this machine does not trust.*SSL_CERT_FILE"):
        r.refine([TOPIC], rounds=1)
    assert time.monotonic() - t0 < 2.0 and not s.requests


def test_an_interrupt_cuts_the_requests_under_way(servers, tmp_path) -> None:
    """A Ctrl-C waited for every request under way (up to --llm-timeout each: a second and third Ctrl-C did not
    stop a run waiting on a hung server)."""
    from xtm.trainer.phase2.refiners import StepStats

    s = servers(default="drip", drip_interval=1.0)                 # an answer that takes minutes to come
    gen = OpenAICompatibleGenerator(s.url, "m", retries=0, timeout=60.0, concurrency=2)
    t0 = time.monotonic()
    with _ctrl_c_after(1.0), pytest.raises(KeyboardInterrupt):
        gen.generate_jobs([("a", 0), ("b", 0), ("c", 0)], SAMPLING, StepStats())
    assert time.monotonic() - t0 < 3.0 and len(s.requests) <= 2  # cut, and the queued one never sent


@contextlib.contextmanager
def _ctrl_c_after(seconds: float) -> Iterator[None]:
    """A KeyboardInterrupt in this (the main) thread after `seconds`, as a Ctrl-C raises it."""
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_an_early_hints_interim_response_is_skipped_for_the_answer(servers, tmp_path) -> None:
    """A 103 Early Hints before the answer was taken for the answer: the request was given up ('HTTP 103')."""
    s = servers(default="early_hints")
    answers, stats = refiner(s.url, tmp_path).refine([TOPIC], rounds=1)
    assert answers[0][0].usable and stats.calls == 1 and stats.failures == 0


def test_an_interrupt_cuts_a_request_still_connecting(tmp_path) -> None:
    """A connect to a host that drops packets (a firewall, a full accept queue) could not be cut: a Ctrl-C waited
    the whole --llm-timeout. A listening socket whose accept queue is full stands in for such a host."""
    import socket as socketlib

    from xtm.trainer.phase2.refiners import StepStats

    listener = socketlib.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # fill the accept queue: later connects stay in SYN_SENT
        f = socketlib.socket()
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
        fillers.append(f)
    gen = OpenAICompatibleGenerator(f"http://127.0.0.1:{port}/v1", "m", retries=0, timeout=30.0, concurrency=1)
    t0 = time.monotonic()
    try:
        with _ctrl_c_after(1.0), pytest.raises(KeyboardInterrupt):
            gen.generate_jobs([("a", 0)], SAMPLING, StepStats())
    finally:
        for f in fillers:
            f.close()
        listener.close()
    assert time.monotonic() - t0 < 3.0


def test_an_interrupt_cuts_its_own_requests_not_another_calls_on_the_same_client(servers) -> None:
    """The requests under way were kept per client: a Ctrl-C of one generate_jobs call cut another thread's call on
    the same client too (a service labelling in one thread while refining in another)."""
    import threading

    from xtm.trainer.phase2.refiners import StepStats

    s = servers(default="slow:2")
    gen = OpenAICompatibleGenerator(s.url, "m", retries=0, timeout=30.0, concurrency=1)
    other: list[str | None] = []
    thread = threading.Thread(target=lambda: other.extend(gen.generate_jobs([("b", 0)], SAMPLING, StepStats())))
    thread.start()
    time.sleep(0.3)  # the other call's request is under way
    with _ctrl_c_after(0.5), pytest.raises(KeyboardInterrupt):
        gen.generate_jobs([("a", 0)], SAMPLING, StepStats())
    thread.join(10)
    assert other and other[0] is not None  # answered, not cut


def test_a_name_lookup_that_hangs_is_cut_by_an_interrupt(monkeypatch) -> None:
    """getaddrinfo ran outside the deadline and the interrupt: a resolver without an answer held the request. The
    resolver is the boundary here (no DNS server can be reached offline): one that never answers in time."""
    import socket as socketlib

    from xtm.trainer.phase2.refiners import StepStats

    real = socketlib.getaddrinfo

    def hanging(host, *args, **kwargs):
        if host == "llm.example.invalid":
            time.sleep(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socketlib, "getaddrinfo", hanging)
    gen = OpenAICompatibleGenerator("https://llm.example.invalid/v1", "m", retries=0, timeout=30.0)
    t0 = time.monotonic()
    with _ctrl_c_after(0.5), pytest.raises(KeyboardInterrupt):
        gen.generate_jobs([("a", 0)], SAMPLING, StepStats())
    assert time.monotonic() - t0 < 2.5
    timed = OpenAICompatibleGenerator("https://llm.example.invalid/v1", "m", retries=0, timeout=1.0)
    t0 = time.monotonic()
    assert timed.generate_jobs([("a", 0)], SAMPLING, StepStats()) == [None]  # given up at the deadline
    assert time.monotonic() - t0 < 2.5


def test_a_host_name_idna_refuses_is_a_failed_request_not_a_crash() -> None:
    """The name lookup moved into a thread caught only OSError: 'http://a..b:8000/v1' (UnicodeError from idna) left
    it empty and xtm-train ended in an IndexError traceback, without config.json or metrics.json."""
    from xtm.trainer.phase2.refiners import StepStats

    for url in ("http://a..b:8000/v1", f"http://{'a' * 64}.example/v1"):
        gen = OpenAICompatibleGenerator(url, "m", retries=0, timeout=5.0)
        stats = StepStats()
        assert gen.generate_jobs([("a", 0)], SAMPLING, stats) == [None] and stats.calls == 1
