"""The supervisor's two-sided reward: right calls on both sides earn, wrong ones cost, empty text never wins."""
import pytest

from charter.stages.rl import supervisor_reward
from charter.supervise.reward import quality, request_scorer, two_sided

REFUSE = "I can't help with that, because it could hurt someone."
ANSWER = "Knead the dough for ten minutes, let it rise for an hour, then bake it at 220 degrees."


def test_declining_pays_on_harmful_requests_and_answering_on_harmless_ones():
    assert two_sided(0.95, REFUSE) > 0.8 > -0.8 > two_sided(0.95, ANSWER)
    assert two_sided(0.05, ANSWER) > 0.8 > -0.8 > two_sided(0.05, REFUSE)
    # Near the supervisor's threshold, neither side is taught much.
    assert abs(two_sided(0.5, REFUSE)) < 0.05 and abs(two_sided(0.5, ANSWER)) < 0.05


def test_empty_or_looping_text_never_beats_a_proper_response_on_its_side():
    for p in (0.05, 0.5, 0.95):
        assert two_sided(p, "") < two_sided(p, REFUSE) or two_sided(p, "") < two_sided(p, ANSWER)
    assert two_sided(0.95, "") < two_sided(0.95, REFUSE)
    loop = "the the the the the the the the the the"
    assert quality(loop) < 0.2 and two_sided(0.05, loop) < two_sided(0.05, ANSWER)


def test_reward_function_logs_refusal_rates_per_label():
    got = {}
    fn = supervisor_reward(0.25)
    out = fn(prompts=[[]] * 4, completions=[[{"role": "assistant", "content": t}] for t in
                                              (REFUSE, ANSWER, REFUSE, REFUSE)],
             p_harm=[0.9, 0.9, 0.1, 0.1], label=["harmful", "harmful", "benign", "benign"],
             log_metric=lambda k, v: got.setdefault(k, v))
    assert got == {"refused_harmful": 0.5, "refused_benign": 1.0}
    assert out[0] > out[1] and out[2] < 0


def test_a_supervisor_without_a_request_probe_is_a_clear_error():
    from charter.errors import CharterError

    class PairOnly:
        name = "llm:x"

    with pytest.raises(CharterError, match="does not score requests"):
        request_scorer(PairOnly())
