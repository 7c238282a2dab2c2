"""The llama.cpp backend's pure helpers (no llama.cpp needed)."""
import numpy as np

from charter.backends.llamacpp import common_prefix_len, log_softmax, sample


def test_common_prefix_leaves_each_sequence_a_token_of_its_own():
    assert common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # identical: the last token is still decoded per seq
    assert common_prefix_len([[7], [7, 8]]) == 0
    assert common_prefix_len([[1, 2], [3, 4]]) == 0


def test_sampling_greedy_and_nucleus():
    logits = np.array([0.0, 5.0, 1.0, -2.0])
    assert sample(logits, 0.0, 0.95, None) == 1
    rng = np.random.default_rng(0)
    draws = {sample(logits, 1.0, 0.5, rng) for _ in range(50)}
    assert draws == {1}  # top_p 0.5: only the dominant token is in the nucleus
    draws = {sample(logits, 5.0, 1.0, np.random.default_rng(1)) for _ in range(1)}
    assert draws <= {0, 1, 2, 3}
    assert abs(np.exp(log_softmax(logits)).sum() - 1) < 1e-9
