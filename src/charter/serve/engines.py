"""What produces the tokens behind `charter serve` and `charter chat`: a local model or an upstream server.

Every engine has one method, `stream(messages, sampling, stats)`: an async iterator of text pieces (one per
token for transformers models and upstream servers), filling `stats` with `prompt_tokens`,
`completion_tokens` and `finish_reason` as it learns them. Closing the iterator early (a client left, the
guard stopped the response) cancels the work behind it.

- transformers models (`default`, folders, hub ids, run directories): one worker thread decodes the requests
  in one batch that new requests join between steps, and streams each row as it decodes
  (`serve/hf_stream.py`); a run whose cast stage ran is steered there, each row by its own request;
- other charter backends (llama.cpp, vLLM, the fake backend): batched the same way, each response streamed
  once it is complete;
- `http(s)://HOST:PORT/v1?model=NAME`: an OpenAI-compatible upstream, streamed through with httpx. An
  upstream that refuses the connection or fails answers 502, one that stops answering 504.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import AsyncIterator, Protocol

from ..errors import CharterError

log = logging.getLogger("charter")


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None

    def key(self):
        """Requests with the same key can share a batch."""
        return (self.temperature > 0, self.temperature, self.top_p)


class UpstreamError(Exception):
    """The upstream server failed (status 502) or timed out (504)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Engine(Protocol):
    name: str

    def stream(self, messages, sampling: Sampling, stats: dict) -> AsyncIterator[str]: ...


_END = object()


class Job:
    """One request inside a batching engine; the worker thread hands its pieces to the request's event loop."""

    def __init__(self, messages, sampling: Sampling, stats: dict):
        self.messages, self.sampling, self.stats = messages, sampling, stats
        self.loop = asyncio.get_running_loop()
        self.q: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.ended = False

    def _put(self, item):
        try:
            self.loop.call_soon_threadsafe(self.q.put_nowait, item)
        except RuntimeError:  # the request's loop has closed: nobody is listening
            self.cancelled = True

    def emit(self, piece: str):
        if piece and not self.cancelled:
            self._put(piece)

    def end(self, error: BaseException | None = None):
        if not self.ended:
            self.ended = True
            self._put(error if error is not None else _END)


class Batcher:
    """A worker thread that runs waiting jobs in batches (same sampling settings, up to `batch_size`)."""

    def __init__(self, run_batch, batch_size: int = 16, name: str = "charter-engine", key=Sampling.key):
        self.run_batch, self.batch_size, self.key = run_batch, max(1, batch_size), key
        self.pending: deque = deque()
        self.cv = threading.Condition()
        self.batches = 0
        threading.Thread(target=self._work, name=name, daemon=True).start()

    def _take(self) -> list:
        with self.cv:
            while not self.pending:
                self.cv.wait()
            first = self.pending.popleft()
            batch, rest = [first], deque()
            while self.pending:
                j = self.pending.popleft()
                if j.cancelled:
                    j.end()
                elif len(batch) < self.batch_size and self.key(j.sampling) == self.key(first.sampling):
                    batch.append(j)
                else:
                    rest.append(j)
            self.pending = rest
        return batch

    def more(self, n: int) -> list:
        """Up to `n` waiting jobs, whatever their sampling settings, at once: for an engine that takes new
        requests into the batch it is running."""
        out = []
        with self.cv:
            while self.pending and len(out) < n:
                j = self.pending.popleft()
                if j.cancelled:
                    j.end()
                else:
                    out.append(j)
        return out

    def _work(self):
        while True:
            batch = []
            for j in self._take():
                if j.cancelled:
                    j.end()
                else:
                    batch.append(j)
            if not batch:
                continue
            try:
                self.run_batch(batch)
                self.batches += 1
            except BaseException as e:  # a failed batch fails its requests, not the server
                log.exception("generation failed")
                for j in batch:
                    j.end(e)
            finally:
                for j in batch:
                    j.end()

    async def stream(self, messages, sampling: Sampling, stats: dict) -> AsyncIterator[str]:
        job = Job(messages, sampling, stats)
        with self.cv:
            self.pending.append(job)
            self.cv.notify()
        try:
            while True:
                item = await job.q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled = True


def split_pieces(text: str) -> list[str]:
    """A finished response as stream pieces: one word each, with the whitespace before it."""
    return re.findall(r"\s*\S+", text)


class BackendEngine:
    """Any charter backend: batched `generate`, each response streamed word by word once it is complete."""

    def __init__(self, backend, batch_size: int = 16):
        self.backend, self.name = backend, backend.name
        # One `generate` call has one token budget and one seed, so only requests that share both share a batch.
        self.batcher = Batcher(self._run, batch_size, key=lambda s: (s.key(), s.max_tokens, s.seed))

    def stream(self, messages, sampling: Sampling, stats: dict):
        return self.batcher.stream(messages, sampling, stats)

    def _run(self, jobs):
        from ..backends import GenParams

        s = jobs[0].sampling
        params = GenParams(max_new_tokens=s.max_tokens, temperature=s.temperature,
                           top_p=s.top_p, seed=s.seed or 0, batch_size=len(jobs))
        texts = self.backend.generate([j.messages for j in jobs], params)
        for j, text in zip(jobs, texts):
            pieces = split_pieces(text)
            keep = pieces[: j.sampling.max_tokens]
            j.stats.update(completion_tokens=len(keep), finish_reason="length" if len(pieces) > len(keep) else "stop")
            for p in keep:
                if j.cancelled:
                    break
                j.emit(p)
            j.end()


class UpstreamEngine:
    """An OpenAI-compatible server, streamed through. The spec and the key work as for the http backend
    (`backends/http.py`): `http(s)://HOST:PORT/v1?model=NAME`, key from `key_env`, else CHARTER_API_KEY,
    else OPENAI_API_KEY."""

    def __init__(self, spec: str, timeout: float = 60.0, key_env: str | None = None):
        from ..backends.http import HTTPBackend

        hb = HTTPBackend(spec, key_env=key_env)
        self.base, self.model, self._key = hb.base, hb.model, hb._key
        self.name = hb.name
        self.timeout = timeout
        self._clients = {}

    def __repr__(self):  # never show the key
        return f"UpstreamEngine({self.name})"

    def _client(self):
        import httpx

        loop = asyncio.get_running_loop()  # an httpx client belongs to the event loop that made it
        if loop not in self._clients:
            self._clients[loop] = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout, connect=min(10.0, self.timeout)),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))
        return self._clients[loop]

    async def stream(self, messages, sampling: Sampling, stats: dict) -> AsyncIterator[str]:
        import httpx

        body = {"model": self.model, "messages": messages, "max_tokens": sampling.max_tokens,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "stream": True,
                "stream_options": {"include_usage": True}}  # else OpenAI and vLLM stream no token counts
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        headers = {"Accept": "text/event-stream"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        url = self.base + "/chat/completions"
        n = 0
        try:
            async with self._client().stream("POST", url, json=body, headers=headers) as r:
                if r.status_code != 200:
                    detail = (await r.aread())[:300].decode("utf-8", "replace")
                    # The client's own mistakes (a bad parameter, a rate limit) keep their status; anything
                    # else is the upstream failing this server.
                    status = r.status_code if r.status_code in (400, 422, 429) else 502
                    raise UpstreamError(status, f"upstream {url} answered HTTP {r.status_code}: {detail}")
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        obj = json.loads(data)
                    except ValueError:
                        raise UpstreamError(502, f"upstream {url} sent a malformed event: {data[:120]!r}") from None
                    if not isinstance(obj, dict):
                        continue
                    if obj.get("error"):
                        raise UpstreamError(502, f"upstream {url} reported an error: {json.dumps(obj['error'])[:300]}")
                    if isinstance(obj.get("usage"), dict):  # the upstream's own counts, where it sends them
                        stats["prompt_tokens"] = obj["usage"].get("prompt_tokens")
                        if isinstance(obj["usage"].get("completion_tokens"), int):
                            stats["completion_tokens"] = n = obj["usage"]["completion_tokens"]
                    for ch in (obj.get("choices") or [])[:1]:
                        piece = (ch.get("delta") or {}).get("content")
                        if piece:
                            n += 1
                            stats["completion_tokens"] = n
                            yield piece
                        if ch.get("finish_reason"):
                            stats["finish_reason"] = ch["finish_reason"]
        except httpx.TimeoutException:
            raise UpstreamError(504, f"upstream {url} did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as e:
            raise UpstreamError(502, f"upstream {url} unreachable ({type(e).__name__}: {e})") from None
        stats.setdefault("completion_tokens", n)


def build_engine(spec: str, device: str = "auto", batch_size: int = 16, timeout: float = 60.0,
                 key_env: str | None = None):
    """The engine for `--model`: an upstream URL, a run directory, or any backend spec."""
    if spec.startswith(("http://", "https://")):
        return UpstreamEngine(spec, timeout, key_env)
    from ..run import open_model

    backend = open_model(spec, device)
    weights = getattr(backend, "inner", backend)  # a cast run's steered model wraps its transformers one
    if type(weights).__name__ == "HFBackend":
        from .hf_stream import HFEngine

        weights.progress = False
        return HFEngine(backend, batch_size)
    return BackendEngine(backend, batch_size)
