"""The HF backend's nucleus sampler draws from the distribution transformers' own top-p warper defines."""
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from charter.backends.hf import NucleusSampler, sampling_kwargs


def reference(scores, temperature, top_p):
    """transformers' temperature then top-p warpers, as probabilities."""
    warped = TemperatureLogitsWarper(temperature)(None, scores.clone())
    return TopPLogitsWarper(top_p)(None, warped).softmax(-1)


def frequencies(sampler, scores, n):
    counts = torch.zeros_like(scores)
    for _ in range(n):
        out = sampler(None, scores)
        assert ((out == 0).sum(-1) == 1).all() and torch.isinf(out).sum(-1).eq(scores.shape[-1] - 1).all()
        counts.scatter_add_(1, out.argmax(-1, keepdim=True), torch.ones(len(scores), 1))
    return counts / n


def test_same_support_and_frequencies_as_transformers_top_p():
    torch.manual_seed(0)
    scores = torch.tensor([[4.0, 3.0, 2.5, 1.0, 0.0, -1.0, -3.0, -5.0],
                           [0.0, 0.1, 0.2, 0.0, -0.1, 0.3, 0.0, 0.1],  # flat: the nucleus is wider than k
                           [9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # one word holds the nucleus
    for top_p in (0.5, 0.9):
        ref = reference(scores, 0.7, top_p)
        emp = frequencies(NucleusSampler(0.7, top_p, k=3), scores, 4000)
        assert torch.equal(emp > 0, ref > 0), (top_p, emp, ref)  # every kept word drawn, no other
        assert (emp - ref).abs().max() < 0.03, (top_p, emp, ref)


def test_top_p_zero_is_greedy_and_one_is_the_whole_distribution():
    torch.manual_seed(1)
    scores = torch.tensor([[0.0, 2.0, 1.0, 1.9]])
    assert {int(NucleusSampler(1.0, 0.0)(None, scores).argmax()) for _ in range(50)} == {1}
    emp = frequencies(NucleusSampler(1.0, 1.0), scores, 4000)
    assert (emp - scores.softmax(-1)).abs().max() < 0.03


def test_generate_arguments():
    assert "logits_processor" not in sampling_kwargs(0.0, 0.95)  # temperature 0: plain greedy decoding
    kw = sampling_kwargs(0.7, 0.95)
    assert kw["do_sample"] is False and isinstance(kw["logits_processor"][0], NucleusSampler)
