"""One guarded completion as a sequence of events, shared by the HTTP server and the terminal chat.

    start  the input decision (None without an input guard)
    text   a piece the client may see
    block  the output guard stopped the response: its decision, and the decline text to send instead
    end    finish_reason, the output decision, token counts

The guard's scoring runs in worker threads (`pool`), so one request's scoring never blocks the event loop
that streams the others.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator

from .engines import Sampling
from .guard import Decision, Guard


@dataclass
class Event:
    kind: str
    text: str = ""
    decision: Decision | None = None
    finish_reason: str | None = None
    usage: dict = field(default_factory=dict)


class StopFilter:
    """Cuts the response at the first stop sequence; holds back the few characters that could start one."""

    def __init__(self, stops):
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buf = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self.stops:
            return text, False
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        cut = max(0, len(self.buf) - self.hold)
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


async def guarded(engine, guard: Guard | None, messages, sampling: Sampling, request_id: str = "-",
                  stop=(), pool=None) -> AsyncIterator[Event]:
    loop = asyncio.get_running_loop()

    def run(fn, *args):
        return loop.run_in_executor(pool, fn, *args)

    d_in = await run(guard.check_input, messages, request_id) if guard else None
    yield Event("start", decision=d_in)
    if d_in is not None and d_in.blocked:
        yield Event("text", d_in.decline)
        yield Event("end", finish_reason="stop", usage=_usage({}))
        return
    mon = guard.monitor(request_id) if guard else None
    stops = StopFilter(stop)
    stats: dict = {}
    reason = None
    pieces = engine.stream(messages, sampling, stats)
    try:
        try:
            async for piece in pieces:
                # The stop sequence first: text past it is never sent, so the output guard never judges it.
                text, hit = stops.feed(piece)
                if mon is not None and text:
                    text = mon.add(text)
                    if text is None:
                        text, blocked = await run(mon.check)
                        if blocked:
                            for ev in _cut(blocked, stats):
                                yield ev
                            return
                if text:
                    yield Event("text", text)
                if hit:
                    reason = "stop"
                    break
        finally:
            await pieces.aclose()
        tail = "" if reason else stops.flush()  # what was held back in case it began a stop sequence
        d_out = None
        if mon is not None:
            held = mon.add(tail) if tail else ""  # released at once when the output guard is not checking
            text, d_out = await run(mon.finish)
            if d_out is not None and d_out.blocked:
                for ev in _cut(d_out, stats):
                    yield ev
                return
            tail = (held or "") + text
    finally:
        if mon is not None:
            mon.abandon()  # a client that left mid-stream: the verdict on what was read is still logged
    if tail:
        yield Event("text", tail)
    yield Event("end", finish_reason=reason or stats.get("finish_reason") or "stop", decision=d_out,
                usage=_usage(stats))


def _cut(decision, stats: dict):
    """The events that end a stream the output guard stopped: the decline, then a content_filter finish."""
    return [Event("block", decision.decline, decision),
            Event("end", finish_reason="content_filter", decision=decision, usage=_usage(stats))]


def _usage(stats: dict) -> dict:
    p, c = stats.get("prompt_tokens") or 0, stats.get("completion_tokens") or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


async def collect(events) -> dict:
    """Run a completion to its end: the text the client gets, the decisions and the finish reason."""
    texts, decisions, out = [], [], {}
    async for ev in events:
        if ev.decision is not None and all(ev.decision is not d for d in decisions):
            decisions.append(ev.decision)
        if ev.kind == "text":
            texts.append(ev.text)
        elif ev.kind == "block":
            texts = [ev.text]  # nothing was sent yet: the decline replaces the partial answer
        elif ev.kind == "end":
            out = {"finish_reason": ev.finish_reason, "usage": ev.usage}
    return {"text": "".join(texts), "decisions": decisions, **out}
