"""vLLM backend for GPU generation and scoring. vLLM is imported only when this
backend is built, so `import charter` never imports it.

Spec: `vllm:MODEL` (a hub id, folder or `default`). The request/response mapping
lives in small pure functions, tested without vLLM or a GPU.
"""
from __future__ import annotations

import math

from ..errors import CharterError
from .base import GenParams


def sampling_kwargs(params: GenParams, seed_offset: int = 0) -> dict:
    """Our GenParams as vLLM SamplingParams keyword arguments (temperature 0 = greedy)."""
    kw = {"max_tokens": params.max_new_tokens, "temperature": params.temperature, "seed": params.seed + seed_offset}
    if params.temperature > 0:
        kw["top_p"] = params.top_p
    return kw


def pick_options(top: dict, options, decode) -> list[float]:
    """Log-probs of each option's text among vLLM's top-k {token_id: Logprob} at one position."""
    best = {}
    for tid, lp in top.items():
        text = (getattr(lp, "decoded_token", None) or decode(tid)).strip()
        best[text] = max(best.get(text, -math.inf), getattr(lp, "logprob", lp))
    return [best.get(o.strip(), -100.0) for o in options]


def continuation_logprob(prompt_logprobs, prompt_token_ids, n_context_tokens: int) -> float:
    """Sum of the log-probs vLLM reports for the prompt tokens after the context."""
    total = 0.0
    for pos in range(n_context_tokens, len(prompt_token_ids)):
        entry = prompt_logprobs[pos]
        if entry is None:
            continue
        lp = entry[prompt_token_ids[pos]]
        total += getattr(lp, "logprob", lp)
    return total


class VLLMBackend:
    def __init__(self, spec: str, device: str = "cuda", gpu_memory_utilization: float = 0.85, **_):
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise CharterError("backend vllm: the vllm package is not installed (pip install vllm, on a CUDA "
                               "machine)") from None
        from ..models import resolve_model

        self.name = f"vllm:{spec}"
        self._SP = SamplingParams
        self.llm = LLM(model=resolve_model(spec), gpu_memory_utilization=gpu_memory_utilization,
                       enable_prefix_caching=True)  # judge prompts share long prefixes
        self.tok = self.llm.get_tokenizer()

    def close(self):
        """Give the GPU memory back, so that a training stage can use it next."""
        import gc

        engine = getattr(self.llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown:
            shutdown()
        del self.llm
        gc.collect()
        try:
            import torch

            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - best effort; CPU-only torch has nothing to free
            pass

    def render(self, messages, add_generation_prompt=True) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def generate(self, prompts, params: GenParams) -> list[str]:
        texts = [self.render(m) for m in prompts]
        sps = [self._SP(**sampling_kwargs(params, i)) for i in range(len(texts))]
        return [o.outputs[0].text.strip() for o in self.llm.generate(texts, sps, use_tqdm=False)]

    def next_token_logprobs(self, contexts, options) -> list[list[float]]:
        sp = self._SP(max_tokens=1, temperature=0.0, logprobs=20)
        outs = self.llm.generate(list(contexts), sp, use_tqdm=False)
        return [pick_options(o.outputs[0].logprobs[0], options, self.tok.decode) for o in outs]

    def score(self, contexts, continuations) -> list[float]:
        sp = self._SP(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        outs = self.llm.generate([c + x for c, x in zip(contexts, continuations)], sp, use_tqdm=False)
        return [continuation_logprob(o.prompt_logprobs, o.prompt_token_ids,
                                     len(self.tok(c, add_special_tokens=False).input_ids))
                for o, c in zip(outs, contexts)]
