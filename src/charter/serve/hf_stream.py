"""Token streaming for transformers models, many requests per batch.

The requests waiting when a batch starts share one `generate` call (left-padded, as the HF backend pads).
A streamer receives each step's tokens for the whole batch and hands every row's new text to its own
request; a stopping criterion ends a row when its request has its own `max_tokens`, or was cancelled (the
client left, or the guard stopped it), so one short or abandoned request does not hold the others' rows
busy. transformers' own streamers handle one sequence only, and its continuous batching does not stream.
"""
from __future__ import annotations

import contextlib

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from ..backends.hf import sampling_kwargs
from .engines import Batcher, Sampling


class _Row:
    def __init__(self, job, tok, eos: set):
        self.job, self.tok, self.eos = job, tok, eos
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
        # Decode the whole row each step: a character split over several tokens only appears once complete.
        text = self.tok.decode(self.ids, skip_special_tokens=True).lstrip()
        if not text.endswith("\ufffd"):
            self.job.emit(text[self.sent:])
            self.sent = len(text)
        if len(self.ids) >= self.job.sampling.max_tokens:
            self.finish("length")

    def finish(self, reason: str):
        if not self.finished:
            self.finished = True
            self.job.stats.update(completion_tokens=len(self.ids), finish_reason=reason)
            self.job.end()


class _RowStreamer(BaseStreamer):
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
            row.finish("length" if len(row.ids) >= row.job.sampling.max_tokens else "stop")


class _RowStop(StoppingCriteria):
    def __init__(self, rows):
        self.rows = rows

    def __call__(self, input_ids, scores, **kwargs):
        return torch.tensor([r.finished or r.job.cancelled for r in self.rows], device=input_ids.device)


class HFEngine:
    def __init__(self, backend, batch_size: int = 16):
        self.backend, self.name = backend, backend.name
        self.eos = backend.eos
        self.batcher = Batcher(self._run, batch_size, name="charter-hf-engine")

    def stream(self, messages, sampling: Sampling, stats: dict):
        return self.batcher.stream(messages, sampling, stats)

    @torch.inference_mode()
    def _run(self, jobs):
        b = self.backend
        max_new = max(j.sampling.max_tokens for j in jobs)
        # A steered backend edits each row by its own request's flag, so rows cannot share an opening run once.
        steer = getattr(b, "steer_rows", None)
        enc = b._encode([b.render(j.messages) for j in jobs], max_new, share=not steer)
        for j, n in zip(jobs, enc["attention_mask"].sum(1).tolist()):
            j.stats["prompt_tokens"] = int(n)
        s = jobs[0].sampling
        if s.seed is not None:
            torch.manual_seed(s.seed)
        rows = [_Row(j, b.tok, self.eos) for j in jobs]
        # A run whose cast stage ran is served steered: each row by the supervisor's reading of its request.
        with steer([j.messages for j in jobs]) if steer else contextlib.nullcontext():
            b.model.generate(
                **enc, max_new_tokens=max_new, pad_token_id=b.tok.pad_token_id,
                **sampling_kwargs(s.temperature, s.top_p),
                streamer=_RowStreamer(rows), stopping_criteria=StoppingCriteriaList([_RowStop(rows)]))
