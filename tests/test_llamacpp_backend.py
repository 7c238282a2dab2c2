"""The llama.cpp backend against the transformers backend on the same embedded model.

The GGUF is Q4_1; transformers runs its dequantized copy in fp32 while llama.cpp multiplies quantized
weights by 8-bit activations, so scores agree within a tolerance and greedy texts agree at their start."""
import pytest

from charter.backends import GenParams, get_backend, user

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp", reason="llama-cpp-python (the `llamacpp` extra) is not installed")

PROMPTS = ["What is the capital of France?", "Name three primary colours.", "How do I boil an egg?",
           "Write a haiku about rain.", "What is 12 times 12?"]


@pytest.fixture(scope="module")
def both():
    # The reference in float32: its near-ties are the ones the tolerances below allow for.
    return get_backend("llamacpp:default", n_seq=4), get_backend("default", device="cpu", precision="float32")


def test_greedy_generation_matches_transformers(both):
    import torch

    cpp, hf = both
    p = GenParams(max_new_tokens=16, temperature=0.0, batch_size=4)
    a = cpp.generate([user(x) for x in PROMPTS], p)
    b = hf.generate([user(x) for x in PROMPTS], p)
    assert all(a) and len(a) == len(PROMPTS)
    # Where the greedy texts part, transformers must have seen a near-tie: llama.cpp's token is within
    # 0.5 nats of transformers' best at the first differing position.
    for prompt, x, y in zip(PROMPTS, a, b):
        tx, ty = (hf.tok(t, add_special_tokens=False).input_ids for t in (x, y))
        j = next((k for k, (u, v) in enumerate(zip(tx, ty)) if u != v), None)
        if j is None:
            continue
        ids = hf.tok(hf.render([{"role": "user", "content": prompt}]), add_special_tokens=False).input_ids + ty[:j]
        with torch.no_grad():
            lp = hf.model(input_ids=torch.tensor([ids])).logits[0, -1].log_softmax(-1)
        assert float(lp[ty[j]] - lp[tx[j]]) < 0.5, (prompt, x, y)


def test_batched_generation_equals_one_at_a_time(both):
    cpp, _ = both
    p = GenParams(max_new_tokens=12, temperature=0.0, batch_size=4)
    batched = cpp.generate([user(x) for x in PROMPTS], p)
    single = [cpp.generate([user(x)], p)[0] for x in PROMPTS]
    assert sum(x == y for x, y in zip(batched, single)) >= 4, list(zip(batched, single))


def test_scores_match_transformers_and_shared_prefix_is_reused(both):
    cpp, hf = both
    head = cpp.render([{"role": "user", "content": "Which is a fruit? (A) apple (B) brick. Answer A or B."}])
    ctxs = [head + "The answer is: (", head + "I think the answer is: ("]
    a, b = cpp.next_token_logprobs(ctxs, ["A", "B"]), hf.next_token_logprobs(ctxs, ["A", "B"])
    for x, y in zip(a, b):
        assert all(abs(u - v) < 0.35 for u, v in zip(x, y)), (a, b)
    # One context alone gives the same numbers as the batch that shared its prefix through the KV cache.
    alone = cpp.next_token_logprobs(ctxs[1:], ["A", "B"])[0]
    assert all(abs(u - v) < 1e-3 for u, v in zip(alone, a[1])), (alone, a[1])
    s1, s2 = cpp.score([head] * 2, ["Apple.", "Brick."]), hf.score([head] * 2, ["Apple.", "Brick."])
    assert all(abs(u - v) < 1.0 for u, v in zip(s1, s2)), (s1, s2)
