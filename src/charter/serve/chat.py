"""`charter chat RUN_DIR|MODEL`: talk to a model in the terminal, behind the same guard as `charter serve`.

Replies stream as they are generated (and released by the output guard). A blocked or flagged turn says
so on a line of its own, with the principle and score. `/reset` starts a new conversation, `/quit` or
end of input (Ctrl-D) leaves.
"""
from __future__ import annotations

import asyncio
import sys
import uuid

from .engines import Sampling, UpstreamError
from .guard import Guard
from .pipeline import guarded


def _note(d) -> str:
    what = "blocked" if d.blocked else "flagged"
    return f"[charter: {what} on {d.direction} under '{d.principle}', P(harmful) {d.score:.2f}]"


async def _turn(engine, guard, history, sampling, out) -> str:
    texts, notes = [], []
    async for ev in guarded(engine, guard, history, sampling, "chat-" + uuid.uuid4().hex[:12]):
        if ev.decision is not None and ev.decision.action != "pass" and all(ev.decision is not n for n in notes):
            notes.append(ev.decision)
        if ev.kind in ("text", "block"):
            piece = ("\n\n" if ev.kind == "block" and texts else "") + ev.text
            texts.append(piece)
            out.write(piece)
            out.flush()
    out.write("\n")
    for d in notes:
        out.write(_note(d) + "\n")
    return "".join(texts)


def chat_loop(engine, guard: Guard | None, sampling: Sampling, system: str | None = None,
              inp=None, out=None, label: str = "") -> int:
    """Read user turns from `inp` until /quit or end of input; returns the number of turns answered."""
    inp, out = inp or sys.stdin, out or sys.stdout
    loop = asyncio.new_event_loop()  # one loop for the whole chat: an upstream client lives on it
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    out.write(f"charter chat: {label or engine.name}; /reset starts over, /quit or Ctrl-D leaves\n")
    turns = 0
    try:
        while True:
            out.write("you> ")
            out.flush()
            line = inp.readline()
            if not line:
                out.write("\n")
                break
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                break
            if text == "/reset":
                history = list(start)
                out.write("(new conversation)\n")
                continue
            history.append({"role": "user", "content": text})
            out.write("model> ")
            out.flush()
            try:
                reply = loop.run_until_complete(_turn(engine, guard, history, sampling, out))
            except UpstreamError as e:  # the upstream failed this turn; the chat goes on
                out.write(f"\n[error: {e.message}]\n")
                history.pop()
                continue
            history.append({"role": "assistant", "content": reply})
            turns += 1
    finally:
        loop.close()
    return turns
