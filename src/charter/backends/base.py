"""The Backend contract: three batched methods, like lm-eval's `LM`.

- `generate(prompts, params)`: chat messages in, response texts out (chat template applied by the backend);
- `score(contexts, continuations)`: summed log-prob of each continuation given its raw-text context;
- `next_token_logprobs(contexts, options)`: log-prob of each option's first token after each context
  (what the CAI multiple-choice judge reads).

`render(messages)` turns chat messages into the raw text a model sees, so judges
can build scoring contexts in the model's own chat format.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from ..errors import CharterError

Messages = list  # list[{"role": str, "content": str}]


@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    batch_size: int = 16


@runtime_checkable
class Backend(Protocol):
    name: str

    def generate(self, prompts: Sequence[Messages], params: GenParams) -> list[str]: ...

    def score(self, contexts: Sequence[str], continuations: Sequence[str]) -> list[float]: ...

    def next_token_logprobs(self, contexts: Sequence[str], options: Sequence[str]) -> list[list[float]]: ...

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str: ...


def user(text: str, system: str | None = None) -> Messages:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": text}]


def option_token_ids(encode, options) -> list[int]:
    """The first token id of each option's text: what a next-token scorer reads for it."""
    ids = []
    for o in options:
        toks = encode(o)
        if not toks:
            raise CharterError(f"option {o!r} encodes to no tokens")
        ids.append(toks[0])
    return ids


def common_prefix_len(seqs) -> int:
    """Length of the longest token prefix all sequences share, leaving each at least one token of its own
    (the last token must be run per sequence to get its logits). Backends use it to compute the judge's
    shared instructions and few-shot example once per batch instead of once per context."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)
