"""The generation cache: same model, messages and parameters give the stored answers; anything else misses."""
from charter.backends import GenParams, user
from charter.backends.cache import CachedBackend, weights_key


class Counting:
    name = "counting"

    def __init__(self):
        self.calls = self.truncated = 0

    def generate(self, prompts, params):
        self.calls += 1
        self.truncated += sum(len(p[-1]["content"]) > 10 for p in prompts)  # as a backend cuts long prompts
        return [f"{p[-1]['content']}@{params.seed}/{self.calls}" for p in prompts]


def test_second_call_is_answered_from_the_cache(tmp_path):
    inner = Counting()
    b = CachedBackend(inner, "k1", tmp_path)
    prompts = [user("hi"), user("there")]
    first = b.generate(prompts, GenParams(seed=1))
    assert b.generate(prompts, GenParams(seed=1)) == first and inner.calls == 1 and b.hits == 1
    # A new backend over the same folder (a later run) reads the same answers.
    assert CachedBackend(Counting(), "k1", tmp_path).generate(prompts, GenParams(seed=1)) == first


def test_other_seed_messages_or_model_miss(tmp_path):
    inner = Counting()
    b = CachedBackend(inner, "k1", tmp_path)
    b.generate([user("hi")], GenParams(seed=1))
    b.generate([user("hi")], GenParams(seed=2))
    b.generate([user("hi", system="be brief")], GenParams(seed=1))
    assert inner.calls == 3 and b.hits == 0
    other = Counting()
    CachedBackend(other, "k2", tmp_path).generate([user("hi")], GenParams(seed=1))
    assert other.calls == 1
    # The same weights in another precision break near-ties differently: a miss.
    half = Counting()
    half.dtype = "torch.bfloat16"
    CachedBackend(half, "k1", tmp_path).generate([user("hi")], GenParams(seed=1))
    assert half.calls == 1


def test_torn_entry_is_recomputed_and_attributes_reach_the_backend(tmp_path):
    inner = Counting()
    b = CachedBackend(inner, "k1", tmp_path)
    b.generate([user("hi")], GenParams())
    for f in tmp_path.rglob("*.json"):
        f.write_text('["half')
    assert b.generate([user("hi")], GenParams()) == ["hi@0/2"] and inner.calls == 2
    b.name = "models/sft"  # Run names trained models through the wrapper
    assert inner.name == "models/sft" and b.name == "models/sft"


def test_only_local_weights_are_cached(tmp_path, tiny_model, tmp_cache):
    assert weights_key("fake") is None
    assert weights_key("http://127.0.0.1:1/v1?model=x") is None
    assert weights_key("some-org/some-model") is None  # a hub id may change behind its name
    assert weights_key(str(tiny_model)) == weights_key(f"hf:{tiny_model}") != weights_key(f"vllm:{tiny_model}")


def test_a_cached_answer_counts_its_truncated_prompts(tmp_path):
    prompts = [user("a long prompt that was cut"), user("short")]
    first = CachedBackend(Counting(), "k1", tmp_path)
    first.generate(prompts, GenParams())
    again = CachedBackend(Counting(), "k1", tmp_path)
    again.generate(prompts, GenParams())
    assert first.truncated == again.truncated == 1 and again.inner.calls == 0


def test_llamacpp_specs_are_keyed_by_the_gguf_without_converting_it(tmp_path, tmp_cache):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(100))  # not a loadable model: a conversion would fail
    assert weights_key(f"llamacpp:{gguf}").startswith("llamacpp:")
    assert weights_key(f"llamacpp:{tmp_path / 'absent.gguf'}") is None
