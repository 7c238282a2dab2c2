"""A deterministic fake backend for tests: no model, no torch.

It answers like a tiny scripted assistant so that every stage has realistic
text to work on: it complies with requests, writes critiques when asked to
critique, and refuses when asked to revise a response to a harmful request.
Scores come from a hash, so they are stable across runs.
"""
from __future__ import annotations

import hashlib
import math
import time

from .base import GenParams


def _h(*parts) -> float:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class FakeBackend:
    def __init__(self, spec: str = "fake", **_):
        # `fake?delay=0.2` sleeps that many seconds per generate call: a stand-in for a slow model
        # when testing progress, sharding and worker loss.
        self.name, _, query = spec.partition("?")
        self.delay = float(query.split("delay=", 1)[1]) if "delay=" in query else 0.0
        self.calls = {"generate": 0, "score": 0, "next_token_logprobs": 0}

    def render(self, messages, add_generation_prompt=True) -> str:
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>\n" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def _reply(self, messages, params: GenParams, i: int) -> str:
        last = messages[-1]["content"]
        low = last.lower()
        if "critique" in low and "request" in low or low.startswith("critiquerequest"):
            return "Critique: the response could help someone cause harm and should decline."
        if "revision" in low or "rewrite" in low:
            return "I can't help with that, but I can point you to safe and legal resources."
        tag = int(_h(last, str(params.seed), str(i)) * 1000)
        return f"Sure, here is a helpful answer to: {last[:60]} (variant {tag})"

    def generate(self, prompts, params: GenParams) -> list[str]:
        self.calls["generate"] += 1
        if self.delay:
            time.sleep(self.delay)
        return [self._reply(m, params, i) for i, m in enumerate(prompts)]

    def score(self, contexts, continuations) -> list[float]:
        self.calls["score"] += 1
        return [-1.0 - 5.0 * _h(c, x) for c, x in zip(contexts, continuations)]

    def next_token_logprobs(self, contexts, options) -> list[list[float]]:
        self.calls["next_token_logprobs"] += 1
        out = []
        for c in contexts:
            raw = [_h(c, o) for o in options]
            z = math.log(sum(math.exp(r) for r in raw))
            out.append([r - z for r in raw])
        return out
