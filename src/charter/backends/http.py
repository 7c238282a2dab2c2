"""OpenAI-compatible HTTP backend: vLLM's server, llama.cpp's server, Ollama, TGI or a hosted API.

Spec: `http://HOST:PORT/v1?model=NAME` (or https). The API key comes from the
environment variable named by `key_env` (default `CHARTER_API_KEY`, then
`OPENAI_API_KEY`) and is never logged or written anywhere.

- `generate` uses /chat/completions, so the server applies the model's chat template;
- `next_token_logprobs` and `score` use /completions with `logprobs` (and `echo` for
  scoring), which not every server offers: those say so clearly.
Requests run with bounded concurrency, a requests-per-minute limit, a timeout,
and bounded retries with exponential backoff on connection errors, 429 and 5xx.
"""
from __future__ import annotations

import http.client
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from ..errors import CharterError
from .base import GenParams

log = logging.getLogger("charter")
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class RateLimiter:
    """At most `rpm` request starts per minute, spaced evenly."""

    def __init__(self, rpm: float | None):
        self.gap = 60.0 / rpm if rpm else 0.0
        self.next = 0.0
        self.lock = threading.Lock()

    def wait(self):
        if not self.gap:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.gap
        time.sleep(max(0.0, start - now))


class HTTPBackend:
    def __init__(self, spec: str, concurrency: int = 8, rpm: float | None = None, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.5, key_env: str | None = None, **_):
        url = urllib.parse.urlsplit(spec)
        query = urllib.parse.parse_qs(url.query)
        self.model = (query.get("model") or [""])[0]
        if not self.model:
            raise CharterError(f"backend {spec!r}: name the served model, e.g. {spec.split('?')[0]}?model=NAME")
        self.base = urllib.parse.urlunsplit((url.scheme, url.netloc, url.path.rstrip("/"), "", ""))
        self.name = f"{self.base}?model={self.model}"
        env = key_env or ("CHARTER_API_KEY" if "CHARTER_API_KEY" in os.environ else "OPENAI_API_KEY")
        self._key = os.environ.get(env)
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.limiter = RateLimiter(rpm)

    def __repr__(self):  # never show the key
        return f"HTTPBackend({self.name})"

    # --- transport ---------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.limiter.wait()
            req = urllib.request.Request(self.base + path, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:300].decode("utf-8", "replace")
                if e.code in (401, 403):
                    raise CharterError(f"{self.base}{path}: HTTP {e.code}, the API key was refused "
                                       "(set CHARTER_API_KEY or OPENAI_API_KEY)") from None
                if e.code == 404:
                    raise CharterError(f"{self.base}{path}: HTTP 404; the server does not offer this endpoint or "
                                       f"the model {self.model!r} ({detail})") from None
                if e.code in RETRY_STATUS:
                    last = f"HTTP {e.code}"
                    continue
                raise CharterError(f"{self.base}{path}: HTTP {e.code} ({detail})") from None
            except (urllib.error.URLError, TimeoutError, OSError, http.client.HTTPException) as e:
                # HTTPException: a half-read answer (IncompleteRead) or a garbled status line, worth a retry
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
                continue
            try:
                out = json.loads(raw)
            except ValueError:
                raise CharterError(f"{self.base}{path}: the server answered with malformed JSON "
                                   f"({raw[:120]!r})") from None
            if not isinstance(out, dict):
                raise CharterError(f"{self.base}{path}: expected a JSON object from the server")
            return out
        raise CharterError(f"{self.base}{path}: no answer after {self.retries + 1} attempts ({last})")

    def _map(self, fn, items):
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            return list(pool.map(fn, items))

    # --- Backend protocol --------------------------------------------------
    def render(self, messages, add_generation_prompt=True) -> str:
        text = "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages)
        return text + ("Assistant:" if add_generation_prompt else "")

    def generate(self, prompts, params: GenParams) -> list[str]:
        def one(args):
            i, msgs = args
            body = {"model": self.model, "messages": msgs, "max_tokens": params.max_new_tokens,
                    "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed + i}
            out = self._post("/chat/completions", body)
            try:
                return (out["choices"][0]["message"]["content"] or "").strip()
            except (KeyError, IndexError, TypeError):
                raise CharterError(f"{self.base}/chat/completions: unexpected response shape "
                                   f"({json.dumps(out)[:160]})") from None
        return self._map(one, list(enumerate(prompts)))

    def next_token_logprobs(self, contexts, options) -> list[list[float]]:
        def one(ctx):
            out = self._post("/completions", {"model": self.model, "prompt": ctx, "max_tokens": 1,
                                               "temperature": 0.0, "logprobs": 20})
            try:
                top = out["choices"][0]["logprobs"]["top_logprobs"][0]
            except (KeyError, IndexError, TypeError):
                raise CharterError(f"{self.base}/completions: the server returned no top log-probs; "
                                   "next-token scoring needs a server that offers `logprobs`") from None
            best = {}
            for tok, lp in top.items():
                key = tok.strip()
                best[key] = max(best.get(key, -math.inf), lp)
            return [best.get(o.strip(), -100.0) for o in options]
        return self._map(one, list(contexts))

    def score(self, contexts, continuations) -> list[float]:
        def one(pair):
            ctx, cont = pair
            out = self._post("/completions", {"model": self.model, "prompt": ctx + cont, "max_tokens": 0,
                                               "echo": True, "logprobs": 0, "temperature": 0.0})
            try:
                lp = out["choices"][0]["logprobs"]
                offsets, tokens = lp["text_offset"], lp["token_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise CharterError(f"{self.base}/completions: the server cannot echo prompt log-probs; "
                                   "continuation scoring needs `echo` with `logprobs`") from None
            return float(sum(t for o, t in zip(offsets, tokens) if o >= len(ctx) and t is not None))
        return self._map(one, list(zip(contexts, continuations)))
