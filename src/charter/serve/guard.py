"""The constitutional guard: the supervisor's request classifier screening a model's inputs and outputs.

This is the inference-time half of the constitution, after Anthropic's Constitutional Classifiers
(arXiv 2501.18837): the classifier the pipeline trains from the constitution reads every request before
the model sees it, and reads the response while it streams.

- Input: the whole conversation (every message, every role) is scored before generation. A harmful one
  is answered with the `decline` text of the principle it falls under, as an ordinary completion.
- Output: the response is held back in chunks of `check_every` pieces (tokens); each chunk is released
  only after the response so far has been scored. Once a score crosses the threshold the stream stops
  there, so nothing past the point of detection is ever sent.
- Policy per direction: `block`, `flag` (answer, but report and log the verdict) or `off`.
- Every decision goes to a JSONL audit log (time, request id, direction, principle, score, action); the
  text itself only with `log_text`.

Nothing here knows about HTTP: `serve/app.py` and `serve/chat.py` drive it, and the unit tests drive it
with a keyword scorer.
"""
from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Protocol, Sequence

from pydantic import field_validator

from ..errors import CharterError
from ..schema import Section, from_dict

# A request longer than the classifier reads at once (its `max_tokens`, less room for its chat wrapper) is
# scored in overlapping windows and the highest score counts, so every token is read, wherever harm sits.
WRAPPER_TOKENS = 64
WINDOW_OVERLAP = 32
# Streamed responses are scored on their last TAIL_TOKENS tokens at each check: the new text with the text
# before it as context, at a cost that does not grow with the response.
TAIL_TOKENS = 192
ROUTE_TOKENS = 96
GENERIC_DECLINE = "I can't help with that."


class Scorer(Protocol):
    """What the guard needs from a supervisor (the classifier supervisor has all of it)."""

    threshold: float
    constitution: object

    def request_harm(self, texts: Sequence[str]) -> list[float]: ...

    def principle_for(self, prompts: Sequence[str], p_harm: Sequence[float]) -> list[str]: ...


class GuardConfig(Section):
    input: Literal["block", "flag", "off"] = "block"
    """Requests: `block` answers a harmful one with its principle's decline text, `flag` answers it but
    reports and logs the verdict, `off` does not score requests."""
    output: Literal["block", "flag", "off"] = "block"
    """Responses, while they stream: `block` stops the response where it turns harmful and sends the
    decline text, `flag` lets it finish but reports and logs the verdict, `off` does not score responses."""
    input_threshold: Optional[float] = None
    """P(harmful) at or above which a request counts as harmful; unset: the supervisor's own threshold."""
    output_threshold: Optional[float] = 0.9
    """P(harmful) at or above which a response counts as harmful; unset: the supervisor's own threshold.
    Higher than the request threshold by default: the classifier is trained and calibrated on requests, and
    an answer that explains a harmful topic (a definition, some history) reads more harmful than the request
    did. benchmarks/guard.py measures the trade-off over thresholds (the README has the figures)."""
    check_every: int = 16
    """Score the response after every this many streamed tokens. Text is held back until it has been
    scored, so a smaller value sends text sooner and scores more often."""
    audit_log: Optional[str] = None
    """JSONL file every decision is appended to; unset: no audit log."""
    log_text: bool = False
    """Also write the scored text into the audit log (off by default: the log then holds no user text)."""

    @field_validator("input_threshold", "output_threshold")
    @classmethod
    def _probability(cls, v):
        if v is not None and not 0.0 <= v <= 1.0:
            raise ValueError(f"must be between 0 and 1, got {v}")
        return v

    @field_validator("check_every")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v


def load_guard_config(path: str | None, **overrides) -> GuardConfig:
    """A GuardConfig from a YAML file (errors name file:line), then the command-line values that were given."""
    from ..yamlio import load_yaml

    data = load_yaml(path) if path else None
    cfg = from_dict(GuardConfig, data)
    given = {k: v for k, v in overrides.items() if v is not None}
    return from_dict(GuardConfig, {**cfg.model_dump(), **given}) if given else cfg


@dataclass
class Decision:
    direction: str
    """`input` or `output`."""
    action: str
    """`pass`, `flag` or `block`."""
    score: float
    """P(harmful) the classifier gave (the highest over the windows it read)."""
    principle: Optional[str] = None
    """The principle a flagged or blocked text falls under."""
    decline: str = ""
    """What the client is told instead, when blocked."""

    @property
    def blocked(self) -> bool:
        return self.action == "block"


def charter_field(decisions: Sequence[Decision], guarded: bool = True) -> dict:
    """The `charter` object of a completion: the decision that blocked or flagged it, else a pass with
    the highest score read."""
    if not guarded:
        return {"blocked": False, "direction": None, "principle": None, "score": None}
    hit = next((d for d in decisions if d.action == "block"), None) or next(
        (d for d in decisions if d.action == "flag"), None)
    if hit:
        return {"blocked": hit.blocked, "direction": hit.direction, "principle": hit.principle,
                "score": round(hit.score, 4)}
    return {"blocked": False, "direction": None, "principle": None,
            "score": round(max((d.score for d in decisions), default=0.0), 4)}


def render_conversation(messages) -> str:
    """One text holding every message, as the classifier reads it. A lone user message is read as it is,
    which is how the classifier was trained; longer conversations keep each message's role."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


class AuditLog:
    """Append-only JSONL of guard decisions, one line per decision, safe to share between threads."""

    def __init__(self, path, log_text: bool = False):
        self.path = Path(path)
        self.log_text = log_text
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only: with log_text the file holds what users wrote.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.f = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, request_id: str, d: Decision, text: str | None = None):
        now = time.time()
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z",
               "request_id": request_id, "direction": d.direction, "principle": d.principle,
               "score": round(d.score, 4), "action": d.action}
        if self.log_text and text is not None:
            rec["text"] = text
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self.lock:
            self.f.write(line)

    def close(self):
        self.f.close()


class Guard:
    def __init__(self, scorer: Scorer, config: GuardConfig | None = None, audit: AuditLog | None = None):
        self.scorer = scorer
        self.cfg = config or GuardConfig()
        if audit is None and self.cfg.audit_log:
            audit = AuditLog(self.cfg.audit_log, self.cfg.log_text)
        self.audit = audit
        self.tokenizer, limit = _reading(scorer)
        self.window = max(2 * WINDOW_OVERLAP, limit - WRAPPER_TOKENS) if limit else None
        constitution = getattr(scorer, "constitution", None)
        self.principles = {p.id: p for p in getattr(constitution, "principles", [])}

    @property
    def input_threshold(self) -> float:
        t = self.cfg.input_threshold
        return self.scorer.threshold if t is None else t

    @property
    def output_threshold(self) -> float:
        t = self.cfg.output_threshold
        return self.scorer.threshold if t is None else t

    def windows(self, text: str) -> list[str]:
        """`text` whole, or in overlapping pieces when it is longer than the classifier reads at once."""
        return windows(text, self.tokenizer, self.window) if self.window else ([text] if text else [])

    def _score(self, parts: list[str]) -> tuple[float, str]:
        """(highest P(harmful) over the windows, the window that scored it)."""
        parts = parts or [""]
        scores = self.scorer.request_harm(parts)
        i = max(range(len(parts)), key=lambda k: scores[k])
        return float(scores[i]), parts[i]

    def scores(self, texts: Sequence[str]) -> list[float]:
        """P(harmful) of each text as the guard reads it (highest over its windows), in one batched call."""
        parts = [self.windows(t) or [""] for t in texts]
        flat = self.scorer.request_harm([w for ws in parts for w in ws])
        out, i = [], 0
        for ws in parts:
            out.append(max(flat[i:i + len(ws)]))
            i += len(ws)
        return out

    def _decide(self, direction, policy, threshold, score, window) -> Decision:
        if score < threshold:
            return Decision(direction, "pass", score)
        # The classifier has already judged the text harmful; the router is asked only which principle it
        # falls under, so hand it a score at the supervisor's own threshold (ours may be lower). It reads the
        # window's end, where the ask usually sits (after pasted context or a jailbreak preamble).
        ask = tail(window, self.tokenizer, ROUTE_TOKENS)
        pid = self.scorer.principle_for([ask], [max(score, self.scorer.threshold)])[0]
        p = self.principles.get(pid)
        decline = (p.decline if p is not None and p.decline else GENERIC_DECLINE)
        return Decision(direction, "block" if policy == "block" else "flag", score, pid, decline)

    def log(self, request_id: str, d: Decision, text: str | None = None):
        if self.audit is not None:
            self.audit.write(request_id, d, text)

    def check_input(self, messages, request_id: str = "-") -> Decision | None:
        """The verdict on a request before generation (None when the input guard is off)."""
        if self.cfg.input == "off":
            return None
        text = render_conversation(messages)
        score, window = self._score(self.windows(text))
        d = self._decide("input", self.cfg.input, self.input_threshold, score, window)
        self.log(request_id, d, text)
        return d

    def check_output(self, text: str, request_id: str = "-") -> Decision | None:
        """The verdict on a whole response (every window read); None when the output guard is off."""
        if self.cfg.output == "off":
            return None
        score, window = self._score(self.windows(text))
        d = self._decide("output", self.cfg.output, self.output_threshold, score, window)
        self.log(request_id, d, text)
        return d

    def monitor(self, request_id: str = "-") -> "OutputMonitor":
        return OutputMonitor(self, request_id)


class OutputMonitor:
    """Screens one streamed response. Feed it pieces as they arrive and send only what it releases:

        text = m.add(piece)          # "" while held back; None: a check is due, call m.check()
        text, blocked = m.check()    # blocked: a Decision (stop, send blocked.decline) or None
        text, final = m.finish()     # at the end: the rest, and the output decision (or None)

    Each check scores the text that arrived since the previous check, with the text before it as context,
    so every token is read by at least one check.
    """

    def __init__(self, guard: Guard, request_id: str = "-"):
        self.guard, self.request_id = guard, request_id
        self.policy = guard.cfg.output
        self.every = guard.cfg.check_every
        self.sent: list[str] = []
        self.pending: list[str] = []
        self.best: Decision | None = None  # highest-scoring check so far
        self.decision: Decision | None = None  # set once flagged or blocked
        self.checks = 0
        self.logged = False  # the decision has gone to the audit log

    @property
    def active(self) -> bool:
        """Still holding text back for checks: the output guard is on and has not flagged yet."""
        return self.policy != "off" and self.decision is None

    def text(self) -> str:
        return "".join(self.sent) + "".join(self.pending)

    def _unread(self) -> list[str]:
        """Windows that read everything not yet scored, with context before it: normally the response's last
        window; when more arrived since the last check than one window holds, every window over it."""
        old, new = "".join(self.sent), "".join(self.pending)
        tok = self.guard.tokenizer
        if len(_offsets(new, tok) or new) <= TAIL_TOKENS - WINDOW_OVERLAP:
            return [tail(old + new, tok)]
        return windows(tail(old, tok, WINDOW_OVERLAP) + new, tok, TAIL_TOKENS)

    def _release(self) -> str:
        out = "".join(self.pending)
        self.sent.append(out)
        self.pending = []
        return out

    def add(self, piece: str) -> str | None:
        self.pending.append(piece)
        if not self.active:
            return self._release()
        return None if len(self.pending) >= self.every else ""

    def check(self) -> tuple[str, Decision | None]:
        if not self.active or not self.pending:
            return self._release(), None
        self.checks += 1
        g = self.guard
        score, window = g._score(self._unread())
        d = g._decide("output", self.policy, g.output_threshold, score, window)
        if self.best is None or d.score > self.best.score:
            self.best = d
        if d.action == "block":
            self.decision = d
            self.logged = True
            g.log(self.request_id, d, self.text() if g.cfg.log_text else None)
            self.pending = []  # never sent
            return "", d
        if d.action == "flag":
            self.decision = d
        return self._release(), None

    def finish(self) -> tuple[str, Decision | None]:
        """Check what is still held back, then log and return the output decision."""
        if self.policy == "off":
            return self._release(), None
        if self.decision is not None and self.decision.blocked:
            return "", self.decision
        text, blocked = self.check() if self.pending else ("", None)
        if blocked:
            return "", blocked
        final = self.decision or self.best or Decision("output", "pass", 0.0)
        self._log(final)
        return text, final

    def abandon(self):
        """The stream ended before `finish` (the client left): log the verdict on what was read, once."""
        if self.policy != "off" and not self.logged and self.checks:
            self._log(self.decision or self.best)

    def _log(self, d: Decision):
        self.logged = True
        self.guard.log(self.request_id, d, "".join(self.sent) if self.guard.cfg.log_text else None)


def _reading(scorer):
    """(tokenizer, most tokens read at once) of the classifier behind a scorer, where it exposes them (the
    classifier supervisor's probe does): windows are then cut in its own tokens (in characters when only
    the limit is known). A scorer with no limit reads every text whole."""
    for obj in (scorer, getattr(scorer, "inner", None)):
        clf = getattr(obj, "clf", None)
        tok = getattr(obj, "tokenizer", None) or getattr(clf, "tok", None)
        limit = getattr(obj, "max_tokens", None) or getattr(clf, "max_tokens", None)
        if tok is not None or limit:
            return tok, limit
    return None, None


def windows(text: str, tokenizer=None, size: int = TAIL_TOKENS, overlap: int = WINDOW_OVERLAP) -> list[str]:
    """Overlapping windows of at most `size` tokens (characters without a tokenizer: a token covers at
    least one character, so a window of `size` characters never exceeds `size` tokens)."""
    if not text:
        return []
    step = size - overlap
    if tokenizer is None:
        if len(text) <= size:
            return [text]
        return [text[i:i + size] for i in range(0, max(1, len(text) - overlap), step)]
    offsets = _offsets(text, tokenizer)
    if offsets is None:
        return windows(text, None, size, overlap)
    if len(offsets) <= size:
        return [text]
    out = []
    for i in range(0, max(1, len(offsets) - overlap), step):
        span = offsets[i:i + size]
        out.append(text[span[0][0]:span[-1][1]])
    return out


def tail(text: str, tokenizer=None, size: int = TAIL_TOKENS) -> str:
    """The last `size` tokens of `text` (characters without a tokenizer)."""
    offsets = _offsets(text, tokenizer)
    if offsets is None:
        return text[-size:]
    return text if len(offsets) <= size else text[offsets[-size][0]:]


def _offsets(text, tokenizer):
    if tokenizer is None:
        return None
    try:
        return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    except (NotImplementedError, TypeError, KeyError):  # a slow tokenizer has no offsets: fall back to characters
        return None


class KeywordScorer:
    """A stand-in classifier for tests and demos: P(harmful) is high when a listed word appears.

    Spec `fake:WORD[=PRINCIPLE],...`; a word without a principle falls under the constitution's first
    harm principle."""

    threshold = 0.5

    def __init__(self, spec: str = "", constitution=None):
        from ..constitution import load_constitution

        self.constitution = constitution or load_constitution("default")
        harm = [p.id for p in self.constitution.principles if p.kind == "harm"] or ["harm"]
        self.words = {}
        for item in filter(None, (x.strip() for x in spec.split(","))):
            word, _, pid = item.partition("=")
            if pid and pid not in {p.id for p in self.constitution.principles}:
                raise CharterError(f"guard fake:{spec}: no principle {pid!r} in the constitution")
            self.words[word.lower()] = pid or harm[0]
        self.calls = 0
        self.helpful = next((p.id for p in self.constitution.principles if p.kind == "helpful"), "helpfulness")

    def _hits(self, text):
        low = text.lower()
        return [w for w in self.words if re.search(rf"\b{re.escape(w)}\b", low)]

    def request_harm(self, texts):
        self.calls += 1
        return [0.95 if self._hits(t) else 0.05 for t in texts]

    def principle_for(self, prompts, p_harm):
        out = []
        for t, h in zip(prompts, p_harm):
            hits = self._hits(t)
            out.append(self.words[hits[0]] if hits and h >= self.threshold else self.helpful)
        return out


class BatchingScorer:
    """Merges the scoring calls of concurrent requests into batched calls to one scorer.

    The classifier reads a batch of texts for little more than the cost of its longest one, so under load
    one forward pass serves many requests instead of each waiting for its own. One worker thread owns the
    wrapped scorer's `request_harm`; callers block on a future."""

    def __init__(self, scorer: Scorer, max_batch: int = 64):
        self.inner = scorer
        self.threshold = scorer.threshold
        self.constitution = scorer.constitution
        self.max_batch = max_batch
        self.q: queue.Queue = queue.Queue()
        self.route_lock = threading.Lock()
        self.batches = 0
        threading.Thread(target=self._work, name="charter-guard-scorer", daemon=True).start()

    def request_harm(self, texts):
        fut: Future = Future()
        self.q.put((list(texts), fut))
        return fut.result()

    def principle_for(self, prompts, p_harm):
        with self.route_lock:
            return self.inner.principle_for(prompts, p_harm)

    def _work(self):
        while True:
            jobs = [self.q.get()]
            n = len(jobs[0][0])
            while n < self.max_batch:
                try:
                    job = self.q.get_nowait()
                except queue.Empty:
                    break
                jobs.append(job)
                n += len(job[0])
            try:
                scores = self.inner.request_harm([t for texts, _ in jobs for t in texts])
                self.batches += 1
            except BaseException as e:
                # One request's text must not fail the others merged with it: score each alone, so only
                # the request that cannot be scored gets the error (and the worker lives on).
                if len(jobs) == 1:
                    jobs[0][1].set_exception(e)
                    continue
                for texts, fut in jobs:
                    try:
                        fut.set_result(self.inner.request_harm(texts))
                    except BaseException as alone:
                        fut.set_exception(alone)
                continue
            i = 0
            for texts, fut in jobs:
                fut.set_result(scores[i:i + len(texts)])
                i += len(texts)


def load_scorer(spec: str, device: str = "auto") -> Scorer | None:
    """`none`, `default`, `classifier[:CONSTITUTION]`, a run directory (the supervisor that run trained,
    built the way it built it) or `fake:WORD,...` (a keyword scorer for tests)."""
    if spec in ("none", "off", ""):
        return None
    if spec.startswith("fake:") or spec == "fake":
        return KeywordScorer(spec.partition(":")[2])
    if (Path(spec) / "manifest.json").exists():
        from ..run import Run

        sup = Run.open(spec, device).supervisor
    elif Path(spec).exists():
        raise CharterError(f"--guard {spec}: not a run directory (no manifest.json)")
    else:
        from ..supervise import get_supervisor

        sup = get_supervisor(spec, device=device)
    if not hasattr(sup, "request_harm"):
        raise CharterError(f"--guard {spec}: the guard needs a classifier supervisor (this one is {sup.name}); "
                           "use --guard default")
    return sup


def build_guard(spec: str, config: GuardConfig | None = None, device: str = "auto",
                batching: bool = False) -> Guard | None:
    """The guard `--guard SPEC` names (None for `none`); `batching` merges concurrent requests' scoring."""
    scorer = load_scorer(spec, device)
    if scorer is None:
        return None
    return Guard(BatchingScorer(scorer) if batching else scorer, config)
