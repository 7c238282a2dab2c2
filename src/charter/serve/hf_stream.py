"""Token streaming for transformers models, with continuous batching.

One worker thread decodes the requests together (`backends.hf.Rows`). Between two steps it takes the requests
that arrived into the running batch, up to `batch_size` rows, prefilled beside the rows already decoding, and
lets each row go once its request has its own `max_tokens`, has ended, or was cancelled (the client left, or
the guard stopped it). So a new request waits one step, not until the batch's longest answer ends, and a
finished or abandoned one stops costing anything. Each row samples by its own request's settings; one with a
`seed` draws from a generator of its own, so its answer does not depend on the requests beside it.

A model that `Rows` cannot run (`hf.decodes_alone`: a generation config asking for more than `Rows` applies, a
recurrent cache) streams through transformers' `generate`, one batch of the requests waiting when it starts.
"""
from __future__ import annotations

import contextlib
import logging

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..backends.hf import NucleusSampler, Rows, sampling_kwargs
from .engines import Batcher, Sampling

log = logging.getLogger("charter")


class _Row:
    def __init__(self, job, tok, eos: set, max_context: int, flag: bool = False, device="cpu"):
        self.job, self.tok, self.eos, self.flag = job, tok, eos, flag
        # Each answer gets at most half the context, and its prompt is cut to fit by this budget alone, so that
        # no row's positions run past the context and none depends on its neighbours.
        self.limit = min(job.sampling.max_tokens, max_context // 2)
        seed = job.sampling.seed
        self.gen = torch.Generator(device).manual_seed(seed) if seed is not None else None
        self.ids: list[int] = []
        self.sent = 0
        self.finished = False

    def take(self, token: int):
        if self.finished:
            return
        if self.job.cancelled:
            return self.finish("cancelled")
        if token in self.eos:
            return self.finish("stop")
        self.ids.append(token)
        # Counted as it goes: a stop sequence or the output guard ends the response before `finish` runs.
        self.job.stats["completion_tokens"] = len(self.ids)
        # Decode the whole row each step: a character split over several tokens only appears once complete.
        text = self.tok.decode(self.ids, skip_special_tokens=True).lstrip()
        if not text.endswith("\ufffd"):
            self.job.emit(text[self.sent:])
            self.sent = len(text)
        if len(self.ids) >= self.limit:
            self.finish("length")

    def finish(self, reason: str):
        if not self.finished:
            self.finished = True
            self.job.stats.update(completion_tokens=len(self.ids), finish_reason=reason)
            self.job.end()


def pick(logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
    """One token per row: greedy, or nucleus-sampled by the row's own request (its own generator if seeded)."""
    logits = logits.float()
    token = logits.argmax(-1)
    groups: dict = {}
    for i, r in enumerate(rows):
        s = r.job.sampling
        if s.temperature > 0:
            groups.setdefault((s.temperature, s.top_p, r.gen), []).append(i)
    for (temperature, top_p, gen), idx in groups.items():
        token[idx] = NucleusSampler(temperature, top_p).draw(logits[idx], gen)
    return token


class HFEngine:
    def __init__(self, backend, batch_size: int = 16):
        self.backend, self.name = backend, backend.name
        self.eos = backend.eos
        self.batch_size = max(1, batch_size)
        self.batcher = Batcher(self._run, batch_size, name="charter-hf-engine")

    def stream(self, messages, sampling: Sampling, stats: dict):
        return self.batcher.stream(messages, sampling, stats)

    @torch.inference_mode()
    def _run(self, jobs):
        """Decode `jobs`, and every request that arrives while they run, until none is left. Jobs taken in are
        appended to `jobs`, so that the batcher ends them all, should a step fail."""
        b = self.backend
        if not b.decodes_alone:
            return self._run_whole(jobs)
        # A run whose cast stage ran is served steered: each row by the supervisor's reading of its request, so
        # rows cannot share an opening run once, and each forward pass is told the flags of the rows it runs.
        steer = getattr(b, "steer_rows", None)
        rows, live, flags = Rows(b.model, self.eos), [], []

        def admit(new):
            joining = [_Row(j, b.tok, self.eos, b.max_context, device=b.device) for j in new]
            enc = b._encode([b.render(j.messages) for j in new], [r.limit for r in joining], share=not steer)
            for j, n in zip(new, enc["attention_mask"].sum(1).tolist()):
                j.stats["prompt_tokens"] = int(n)
            if steer:
                for r, f in zip(joining, b.flags([j.messages for j in new])):
                    r.flag = f
            flags[:] = [r.flag for r in joining]
            rows.join(enc)
            live.extend(joining)

        with steer(lambda: flags) if steer else contextlib.nullcontext():
            admit(jobs)
            while live:
                token = pick(rows.scores(), live)
                for r, t in zip(live, token.tolist()):
                    r.take(t)
                going = torch.tensor([not r.finished for r in live], device=token.device)
                rows.keep(going)
                live[:] = [r for r in live if not r.finished]
                if live:
                    flags[:] = [r.flag for r in live]
                    rows.step(token[going])
                # The batcher ends every job in `jobs` should a step fail; the finished ones have ended already.
                jobs[:] = [r.job for r in live]
                room = self.batch_size - len(live)
                new = self.batcher.more(room) if room and (rows.joinable or not live) else []
                if not new:
                    continue
                jobs.extend(new)
                try:
                    admit(new)
                except Exception as e:  # a request that cannot be prefilled fails alone, not the rows decoding
                    log.exception("a request could not join the running batch")
                    for j in new:
                        j.end(e)
                    jobs[:], flags[:] = [r.job for r in live], [r.flag for r in live]

    def _run_whole(self, jobs):
        b = self.backend
        rows = [_Row(j, b.tok, self.eos, b.max_context) for j in jobs]
        steer = getattr(b, "steer_rows", None)
        enc = b._encode([b.render(j.messages) for j in jobs], [r.limit for r in rows], share=not steer)
        for j, n in zip(jobs, enc["attention_mask"].sum(1).tolist()):
            j.stats["prompt_tokens"] = int(n)
        s = jobs[0].sampling
        if s.seed is not None:  # one generator for the batch: a seeded answer here depends on its neighbours
            torch.manual_seed(s.seed)
        max_new = max(r.limit for r in rows)
        flags = b.flags([j.messages for j in jobs]) if steer else None
        with steer(lambda: flags) if steer else contextlib.nullcontext():
            b.model.generate(
                **enc, max_new_tokens=max_new, pad_token_id=b.tok.pad_token_id,
                **sampling_kwargs(s.temperature, s.top_p),
                streamer=_RowStreamer(rows), stopping_criteria=StoppingCriteriaList([_RowStop(rows)]))


class _RowStreamer(BaseStreamer):
    """`generate`'s tokens for the whole batch at each step, handed to each row's request."""

    def __init__(self, rows):
        self.rows, self.prompt_seen = rows, False

    def put(self, value):
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            row.take(token)

    def end(self):
        for row in self.rows:
            row.finish("length" if len(row.ids) >= row.limit else "stop")


class _RowStop(StoppingCriteria):
    """Ends a row of `generate` whose request has its tokens or was cancelled."""

    def __init__(self, rows):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        return torch.tensor([r.finished or r.job.cancelled for r in self.rows], device=input_ids.device)
