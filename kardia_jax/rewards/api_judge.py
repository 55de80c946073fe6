"""`ApiJudge`: the evaluation judge served by any OpenAI-compatible
`/chat/completions` endpoint (GPT-5-mini as in the paper, or a vLLM, SGLang or
llama.cpp server), with `RubricJudge`'s `evaluate(contexts, completions)`.

One request per (context, completion), built and read by `api_format`: the shipped
rubric's instructions as the system message, the context and the candidate
(neutralised, as data between the rubric's delimiters) as the user message, and a
strict JSON reply with the five integer scores. With `top_logprobs` the score of a
dimension is the expected value over "1".."5" at the token holding its digit (as
`RubricJudge`'s "expected" mode); without them, the integer. A reply that is not
that JSON is retried, then counted as a failure: the item gets no score. Every
judged item is passed to `record` as its reply arrives, keyed by a hash of the
exact request, and a key seen in `cache_rows` is never sent again.

The API key is sent in the Authorization header and nowhere else: it is never put
in a message, a count or a cache row (server text is scrubbed of it too).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx
import numpy as np

from kardia_jax.errors import ConfigError, KardiaError
from kardia_jax.rewards.api_format import (
    InvalidReply,
    candidate_text,
    expected_scores,
    parse_reply,
    render_messages,
)
from kardia_jax.rewards.prompt import JudgeContext, PromptLimits
from kardia_jax.rewards.rubric import DIMENSIONS, Rubric, load_rubric

SPEC_PREFIX = "openai:"
BASE_URL_ENV = "OPENAI_BASE_URL"  # the openai SDK's own variable names
KEY_ENV = "OPENAI_API_KEY"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_CAUSES = ("429", "5xx", "timeout", "connection", "invalid_reply")
# Request settings a server may refuse with a 400 naming them: dropped for the rest
# of the run (and remembered in the cache file), never a failure.
OPTIONAL_PARAMS = ("logprobs", "temperature")
MAX_RETRY_AFTER_S = 300.0  # a server's Retry-After is honoured up to this
_SERVER_TEXT = 300  # characters of a server's error message quoted in ours


class ApiError(KardiaError):
    """The endpoint refused a request (a 4xx other than 429) or failed too often."""


def is_api_spec(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(SPEC_PREFIX)


def parse_spec(spec: str) -> str:
    """The model name of an `openai:MODEL` spec."""
    model = spec[len(SPEC_PREFIX) :].strip() if is_api_spec(spec) else ""
    if not model:
        raise ConfigError(f"judge {spec!r}: expected openai:MODEL (e.g. openai:gpt-5-mini)")
    return model


def endpoint_from_env(env=None) -> tuple[str, str]:
    """(base URL, key) from OPENAI_BASE_URL and OPENAI_API_KEY. A missing key is an
    error only for OpenAI's own endpoint: local servers often need none."""
    env = os.environ if env is None else env
    base = (env.get(BASE_URL_ENV) or DEFAULT_BASE_URL).strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # The value is not shown: a URL may carry credentials.
        raise ConfigError(f"{BASE_URL_ENV}: not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
    key = (env.get(KEY_ENV) or "").strip()
    if not key and parts.hostname == urlsplit(DEFAULT_BASE_URL).hostname:
        raise ConfigError(
            f"{KEY_ENV} is not set: the OpenAI API needs a key (set {BASE_URL_ENV} for a "
            "local server that needs none)"
        )
    return base, key


@dataclasses.dataclass(frozen=True)
class ApiJudgeConfig:
    """Run settings of an API judge (eval config: `judge.api.*`, see eval/config.py)."""

    rubric: str = "v1"  # shipped rubric version, or a path to a rubric file
    show_reasoning: bool = False  # also show the understanding and reasoning spans
    concurrency: int = 8  # requests in flight at once
    max_retries: int = 6  # per item, over every retried cause
    timeout_s: float = 60.0  # per request
    temperature: float | None = 0.0  # None: not sent (GPT-5 models take only their default)
    top_logprobs: int = 5  # 0: no logprobs asked, integer scores
    reasoning_effort: str = ""  # "" = not sent; "minimal" / "low" / ... for reasoning models
    backoff_s: float = 1.0  # first retry's delay, doubled per retry, with jitter
    max_backoff_s: float = 60.0
    empty_score: float | None = 1.0  # empty replies: this score, no request; None: judged
    abort_after_failures: int = 32  # consecutive failed items that stop the run
    limits: PromptLimits = PromptLimits()  # tokens, as characters x CHARS_PER_TOKEN

    def __post_init__(self):
        checks = (
            ("concurrency", self.concurrency >= 1, ">= 1"),
            ("max_retries", self.max_retries >= 0, ">= 0"),
            ("timeout_s", self.timeout_s > 0, "> 0"),
            ("top_logprobs", 0 <= self.top_logprobs <= 20, "0..20 (the API's range)"),
            ("backoff_s", self.backoff_s >= 0, ">= 0"),
            ("max_backoff_s", self.max_backoff_s >= self.backoff_s, ">= backoff_s"),
            ("abort_after_failures", self.abort_after_failures >= 1, ">= 1"),
        )
        for name, ok, need in checks:
            if not ok:
                raise ConfigError(f"judge.api.{name}={getattr(self, name)}: need {need}")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ConfigError(f"judge.api.temperature={self.temperature}: need 0..2 or None")
        if self.empty_score is not None and not 1 <= self.empty_score <= 5:
            raise ConfigError(f"judge.api.empty_score={self.empty_score}: need 1..5 or None")

    @property
    def mode(self) -> str:
        """The settings that change scores, for `eval.run.judge_identity`."""
        effort = f",reasoning_effort={self.reasoning_effort}" if self.reasoning_effort else ""
        return f"api,temperature={self.temperature},top_logprobs={self.top_logprobs}{effort}"


# ---------------------------------------------------------------------- judge
@dataclasses.dataclass
class ApiJudgeResult:
    """Scores of N candidates; a failed item's row is NaN (no score is invented)."""

    scores: np.ndarray  # [N, 5] f64, DIMENSIONS order; NaN rows where `failed`
    failed: np.ndarray  # [N] bool: no valid reply within the retry budget
    source: list[str]  # per item: "expected" | "integer" | "mixed" | "empty" | "failed"
    empty: np.ndarray  # [N] bool: nothing to judge, scored `empty_score`
    truncated: np.ndarray  # [N] bool
    rubric_id: str
    judge: str
    counts: dict[str, int]


class _Failed(Exception):
    def __init__(self, cause: str, detail: str):
        super().__init__(f"{cause}: {detail}")
        self.cause, self.detail = cause, detail


class ApiJudge:
    """Scores (context, completion) pairs through an OpenAI-compatible endpoint.

    `cache_rows`: rows an earlier run passed to `record` (read before anything is
    sent); `record(row)`: called once per judged item as soon as its reply arrives
    (and once per failure, without scores), under a lock, so the caller can append
    it to durable storage. `name` (`openai:MODEL@host`) keys the eval's score file.
    """

    def __init__(
        self,
        model: str,
        config: ApiJudgeConfig = ApiJudgeConfig(),
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key: str = "",
        rubric: Rubric | None = None,
        cache_rows: Iterable[dict] = (),
        record: Callable[[dict], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.model, self.config = model, config
        self.rubric = rubric or load_rubric(config.rubric)
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.name = f"{SPEC_PREFIX}{model}@{host}"  # never the key nor URL credentials
        self._key = api_key
        self._record = record
        self._lock = threading.Lock()
        self.totals: Counter = Counter()
        self._endpoint = _sha256({"model": model, "base_url": self.base_url})
        self.refused: set[str] = set()
        self._cache: dict[str, dict] = {}
        for row in cache_rows:
            if row.get("refused") and row.get("endpoint") == self._endpoint:
                self.refused.update(p for p in row["refused"] if p in OPTIONAL_PARAMS)
            elif isinstance(row.get("key"), str) and _valid_scores(row.get("scores")):
                self._cache[row["key"]] = row
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s),
            limits=httpx.Limits(
                max_connections=config.concurrency, max_keepalive_connections=config.concurrency
            ),
            transport=transport,
        )
        self._url = f"{self.base_url}/chat/completions"
        self._consecutive_failures = 0

    @classmethod
    def from_spec(cls, spec: str, config: ApiJudgeConfig = ApiJudgeConfig(), **kw) -> ApiJudge:
        """`openai:MODEL`, with the endpoint and key from OPENAI_BASE_URL / OPENAI_API_KEY."""
        model = parse_spec(spec)
        base, key = endpoint_from_env()
        return cls(model, config, base_url=base, api_key=key, **kw)

    @classmethod
    def check(cls, spec: str, config: ApiJudgeConfig = ApiJudgeConfig(), contexts=()) -> None:
        """What `from_spec` and the first request would refuse, without sending any:
        the spec, the environment, the settings, the rubric, and the `contexts`'
        prompts rendered (a run's preflight)."""
        parse_spec(spec)
        endpoint_from_env()
        rubric = load_rubric(config.rubric)
        for context in contexts:
            cand, _, _ = candidate_text("", config.show_reasoning, config.limits)
            render_messages(
                rubric, context, cand, show_reasoning=config.show_reasoning, limits=config.limits
            )

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ requests
    def request_body(self, messages: list[dict], *, refused: Iterable[str] = ()) -> dict:
        """The JSON body sent for `messages`, without the settings in `refused`."""
        c = self.config
        body = {
            "model": self.model,
            "messages": messages,
            "response_format": {"type": "json_object"},
        }
        if c.temperature is not None and "temperature" not in refused:
            body["temperature"] = c.temperature
        if c.top_logprobs > 0 and "logprobs" not in refused:
            body["logprobs"] = True
            body["top_logprobs"] = c.top_logprobs
        if c.reasoning_effort:
            body["reasoning_effort"] = c.reasoning_effort
        return body

    def cache_key(self, messages: list[dict]) -> str:
        """sha256 of the endpoint, the model and the request as configured (settings
        a server refused still count as asked: a rerun finds the item without
        asking again)."""
        return _sha256({"base_url": self.base_url, "body": self.request_body(messages)})

    def _scrub(self, text: str) -> str:
        """Server text fit for a message or a file: the key replaced before the text
        is cut (a cut key would leak its prefix), one line."""
        text = str(text).replace(self._key, "***") if self._key else str(text)
        return " ".join(text.split())[:_SERVER_TEXT]

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S)
        d = min(self.config.max_backoff_s, self.config.backoff_s * 2**attempt)
        return d / 2 + random.uniform(0, d / 2)  # jitter: concurrent retries spread out

    def _count(self, **kw) -> None:
        with self._lock:
            self.totals.update(kw)

    def _judge_one(self, key: str, messages: list[dict], stop: threading.Event) -> dict:
        """One item to a cache row (recorded), or `_Failed` after the retry budget.
        Raises ApiError on a 4xx other than 429 that no setting explains."""
        attempt = 0
        while True:
            if stop.is_set():
                raise _Failed("stopped", "the run stopped")
            with self._lock:
                refused = set(self.refused)
            body = self.request_body(messages, refused=refused)
            retry_after = None
            self._count(requests=1)
            try:
                resp = self._client.post(self._url, json=body)
            except httpx.TimeoutException:
                cause, detail = "timeout", f"no reply within {self.config.timeout_s} s"
            except httpx.TransportError as e:
                cause, detail = "connection", self._scrub(f"{type(e).__name__}: {e}")
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        row = self._row(key, resp, refused)
                    except InvalidReply as e:
                        cause, detail = "invalid_reply", self._scrub(str(e))
                    else:
                        with self._lock:
                            self._cache[key] = row
                            if self._record is not None:
                                self._record(row)
                        return row
                elif status == 429 or status >= 500:
                    cause = "429" if status == 429 else "5xx"
                    detail = f"HTTP {status}: {self._server_message(resp)}"
                    retry_after = _retry_after(resp.headers.get("retry-after"))
                else:
                    message = self._server_message(resp)
                    named = [
                        p
                        for p in OPTIONAL_PARAMS
                        if p in message.lower() and p not in refused and p in body
                    ]
                    if status in (400, 422) and named:
                        self._refuse(named, message)
                        continue  # the same request without them: not a retry
                    raise ApiError(
                        f"judge {self.name}: HTTP {status} from {self._url_shown()}: {message}"
                    )
            if attempt >= self.config.max_retries:
                raise _Failed(cause, detail)
            attempt += 1
            self._count(**{f"retries_{cause}": 1})
            stop.wait(self._delay(attempt - 1, retry_after))

    def _url_shown(self) -> str:
        p = urlsplit(self._url)
        return f"{p.scheme}://{p.hostname}{f':{p.port}' if p.port else ''}{p.path}"

    def _server_message(self, resp: httpx.Response) -> str:
        try:
            err = resp.json().get("error")
            text = err.get("message") if isinstance(err, dict) else err
        except (ValueError, AttributeError):
            text = None
        return self._scrub(text if isinstance(text, str) and text else resp.text or "(no body)")

    def _refuse(self, params: list[str], message: str) -> None:
        with self._lock:
            new = [p for p in params if p not in self.refused]
            if not new:
                return
            self.refused.update(new)
            self.totals.update({f"{p}_refused": 1 for p in new})
            if self._record is not None:
                self._record({"endpoint": self._endpoint, "refused": sorted(self.refused)})
        print(
            f"judge {self.name}: the server refused {', '.join(new)} ({message}); "
            "sent without for the rest of the run",
            file=sys.stderr,
            flush=True,
        )

    def _row(self, key: str, resp: httpx.Response, refused: set[str]) -> dict:
        try:
            data = resp.json()
        except ValueError:
            raise InvalidReply("the response body is not JSON") from None
        usage = data.get("usage") if isinstance(data, dict) else None
        if isinstance(usage, dict):
            self._count(
                prompt_tokens=_int(usage.get("prompt_tokens")),
                completion_tokens=_int(usage.get("completion_tokens")),
            )
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise InvalidReply("no choices[0].message.content") from None
        integers = parse_reply(content)
        scores, sources = expected_scores(content, choice.get("logprobs"), integers)
        return {
            "key": key,
            "scores": scores,
            "integers": integers,
            "source": sources,
            "refused": sorted(refused),
            "usage": usage if isinstance(usage, dict) else None,
        }

    # ------------------------------------------------------------------ scoring
    def evaluate(
        self, contexts: Sequence[JudgeContext], completions: Sequence[str]
    ) -> ApiJudgeResult:
        if len(contexts) != len(completions):
            raise KardiaError(f"{len(contexts)} contexts but {len(completions)} completions")
        c = self.config
        n = len(contexts)
        scores = np.full((n, len(DIMENSIONS)), np.nan, np.float64)
        source = ["failed"] * n
        empty, truncated = np.zeros(n, bool), np.zeros(n, bool)
        todo: dict[str, tuple[list[dict], list[int]]] = {}  # one request per unique prompt
        for i, (ctx, completion) in enumerate(zip(contexts, completions, strict=True)):
            cand, empty[i], truncated[i] = candidate_text(completion, c.show_reasoning, c.limits)
            if empty[i] and c.empty_score is not None:
                scores[i], source[i] = c.empty_score, "empty"
                continue
            messages = render_messages(
                self.rubric, ctx, cand, show_reasoning=c.show_reasoning, limits=c.limits
            )
            todo.setdefault(self.cache_key(messages), (messages, []))[1].append(i)
        counts = Counter(candidates=n, empty=int(empty.sum()), truncated=int(truncated.sum()))
        send = {}
        for key, (messages, rows) in todo.items():
            if key in self._cache:
                counts["cache_hits"] += len(rows)
                self._fill(self._cache[key], rows, scores, source)
            else:
                send[key] = (messages, rows)
        for key, outcome in self._run(send).items():
            rows = send[key][1]
            if isinstance(outcome, dict):
                self._fill(outcome, rows, scores, source)
            else:
                counts["failures"] += len(rows)
        counts["scored"] = int(np.isfinite(scores).all(axis=1).sum())
        self.totals.update(
            {k: v for k, v in counts.items() if k in ("cache_hits", "failures", "empty")}
        )
        for s in source:
            if s in ("expected", "integer", "mixed"):
                self.totals[f"scored_{s}"] += 1
        return ApiJudgeResult(
            scores=scores,
            failed=~np.isfinite(scores).all(axis=1),
            source=source,
            empty=empty,
            truncated=truncated,
            rubric_id=self.rubric.id,
            judge=self.name,
            counts=dict(counts),
        )

    def score(self, contexts, completions) -> np.ndarray:
        return self.evaluate(contexts, completions).scores

    @staticmethod
    def _fill(row: dict, rows: list[int], scores: np.ndarray, source: list[str]) -> None:
        kinds = set(row.get("source") or ["integer"])
        kind = kinds.pop() if len(kinds) == 1 else "mixed"
        for i in rows:
            scores[i] = row["scores"]
            source[i] = kind

    def _run(self, send: dict) -> dict:
        """{key: cache row | _Failed} for the items to send, `concurrency` at a time.
        Each reply is recorded by its worker as it arrives, so an interrupt or a kill
        loses none that arrived."""
        if not send:
            return {}
        stop = threading.Event()
        pool = cf.ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="api-judge")
        futures = {pool.submit(self._judge_one, k, m, stop): k for k, (m, _) in send.items()}
        out = {}
        try:
            for fut in cf.as_completed(futures):
                key = futures[fut]
                try:
                    out[key] = fut.result()
                except _Failed as e:
                    out[key] = e
                    self._after_failure(key, e)
                else:
                    with self._lock:
                        self._consecutive_failures = 0
        finally:
            # On an error or interrupt: no new requests or retries, pending items dropped.
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
        return out

    def _after_failure(self, key: str, e: _Failed) -> None:
        with self._lock:
            self._consecutive_failures += 1
            if self._record is not None:  # for the record; a rerun retries the item
                self._record({"key": key, "failed": e.cause, "error": e.detail})
            streak = self._consecutive_failures
        if streak >= self.config.abort_after_failures:
            raise ApiError(
                f"judge {self.name}: {streak} items in a row failed (last: {e.cause}, "
                f"{e.detail}); judged items are cached, rerun to go on"
            )

    def api_counts(self) -> dict:
        """This run's requests, retries by cause, failures, cache hits and tokens."""
        t = self.totals
        return {
            "requests": t["requests"],
            "retries": {c: t[f"retries_{c}"] for c in RETRY_CAUSES},
            "failures": t["failures"],
            "cache_hits": t["cache_hits"],
            "empty_not_sent": t["empty"],
            "scored_from": {k: t[f"scored_{k}"] for k in ("expected", "integer", "mixed")},
            "refused_settings": {p: t[f"{p}_refused"] for p in OPTIONAL_PARAMS},
            "tokens": {"prompt": t["prompt_tokens"], "completion": t["completion_tokens"]},
        }


def _sha256(obj) -> str:
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _valid_scores(s) -> bool:
    return (
        isinstance(s, list)
        and len(s) == len(DIMENSIONS)
        and all(isinstance(x, int | float) and 1 <= x <= 5 for x in s)
    )


def _int(x) -> int:
    return x if isinstance(x, int) and not isinstance(x, bool) else 0


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
