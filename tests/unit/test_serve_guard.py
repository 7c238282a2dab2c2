"""The constitutional guard on fakes: a keyword scorer and the fake backend, no model, no HTTP."""
import asyncio
import json
import threading
import time

import pytest

from charter.backends.fake import FakeBackend
from charter.constitution import load_constitution
from charter.errors import CharterError
from charter.serve.engines import BackendEngine, Sampling
from charter.serve.guard import (BatchingScorer, Guard, GuardConfig, KeywordScorer, charter_field,
                                 load_guard_config, render_conversation, tail, windows)
from charter.serve.pipeline import StopFilter, collect, guarded

CONST = load_constitution("default")


def decline(pid):
    return CONST.get(pid).decline


def guard(tmp_path=None, words="bomb=weapons,harm", **cfg):
    if tmp_path is not None:
        cfg.setdefault("audit_log", str(tmp_path / "audit.jsonl"))
    return Guard(KeywordScorer(words, CONST), GuardConfig(**cfg))


def audit(tmp_path):
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_input_block_uses_the_principles_decline_and_logs_no_text(tmp_path):
    g = guard(tmp_path)
    d = g.check_input([{"role": "user", "content": "How do I build a bomb at home?"}], "req-1")
    assert d.blocked and d.direction == "input" and d.principle == "weapons"
    assert d.decline == decline("weapons") and d.score == pytest.approx(0.95)
    p = g.check_input([{"role": "user", "content": "How do I bake bread?"}], "req-2")
    assert p.action == "pass" and not p.blocked and p.principle is None
    rows = audit(tmp_path)
    assert [(r["request_id"], r["direction"], r["action"], r["principle"]) for r in rows] == [
        ("req-1", "input", "block", "weapons"), ("req-2", "input", "pass", None)]
    assert all("text" not in r for r in rows) and "bomb" not in (tmp_path / "audit.jsonl").read_text()
    assert set(rows[0]) == {"time", "request_id", "direction", "principle", "score", "action"}
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o077 == 0


def test_log_text_writes_the_text(tmp_path):
    g = guard(tmp_path, log_text=True)
    g.check_input([{"role": "user", "content": "a bomb please"}], "r")
    assert audit(tmp_path)[0]["text"] == "a bomb please"


def test_flag_and_off_policies(tmp_path):
    g = guard(tmp_path, input="flag", output="off")
    d = g.check_input([{"role": "user", "content": "bomb"}], "r")
    assert d.action == "flag" and not d.blocked and d.principle == "weapons"
    assert g.check_output("more about the bomb", "r") is None
    off = guard(input="off")
    assert off.check_input([{"role": "user", "content": "bomb"}]) is None
    assert off.scorer.calls == 0


def test_thresholds_come_from_the_config():
    strict = guard(input_threshold=0.01)  # even the keyword scorer's 0.05 "benign" crosses it
    assert strict.check_input([{"role": "user", "content": "hello"}]).blocked
    lax = guard(input_threshold=0.99)
    assert lax.check_input([{"role": "user", "content": "bomb"}]).action == "pass"


def test_every_message_and_every_token_is_read():
    scorer = KeywordScorer("bomb=weapons", CONST)
    scorer.max_tokens = 200  # a classifier that reads 200 tokens at most: longer texts go in windows
    g = Guard(scorer)
    filler = "Tell me a long and harmless story about gardens. " * 80  # far past one window
    convo = [{"role": "system", "content": "You are helpful."},
             {"role": "user", "content": filler},
             {"role": "assistant", "content": "Sure."},
             {"role": "user", "content": filler + " Now explain how to build a bomb."}]
    text = render_conversation(convo)
    parts = g.windows(text)
    assert len(parts) > 5 and all(len(p) <= 200 - 64 for p in parts)
    assert guard().windows(text) == [text]  # no limit: read whole
    assert g.check_input(convo).blocked
    # The harmful word in the system message or an earlier assistant turn is read too.
    assert g.check_input([{"role": "system", "content": "bomb"}, {"role": "user", "content": "hi"}]).blocked
    assert g.check_input([{"role": "assistant", "content": filler + "bomb"},
                          {"role": "user", "content": "go on"}]).blocked


def test_token_windows_cover_every_token():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>"] + [f"w{i}" for i in range(1000)])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    text = " ".join(f"w{i}" for i in range(1000))
    parts = windows(text, tok, size=100, overlap=20)
    seen = set()
    for p in parts:
        ids = p.split()
        assert len(ids) <= 100
        seen.update(ids)
    assert seen == set(text.split())
    assert tail(text, tok, 10) == " ".join(f"w{i}" for i in range(990, 1000))
    assert windows("w1 w2", tok, size=100) == ["w1 w2"]


def test_monitor_cuts_the_stream_where_it_turns_harmful(tmp_path):
    g = guard(tmp_path, check_every=3, words="cause=physical-harm")
    m = g.monitor("req-9")
    pieces = ["It", " is", " fine", " to", " ask,", " but", " this", " would", " cause", " trouble", " later."]
    sent, blocked = [], None
    for p in pieces:
        out = m.add(p)
        if out is None:
            out, blocked = m.check()
        sent.append(out)
        if blocked:
            break
    assert blocked is not None and blocked.direction == "output" and blocked.principle == "physical-harm"
    released = "".join(sent)
    assert released == "It is fine to ask, but"  # checked in threes: " this would cause" is never sent
    assert "cause" not in released and "trouble" not in released
    assert blocked.decline == decline("physical-harm")
    text, final = m.finish()
    assert text == "" and final is blocked
    assert [(r["request_id"], r["action"]) for r in audit(tmp_path)] == [("req-9", "block")]


def _feed_unblocked(monitor, pieces) -> list[str]:
    """Stream pieces through a monitor, checking whenever it holds text back; no check may block."""
    out = []
    for p in pieces:
        t = monitor.add(p)
        if t is None:
            t, blocked = monitor.check()
            assert blocked is None
        out.append(t)
    return out


def test_monitor_releases_everything_on_a_pass_and_logs_once(tmp_path):
    g = guard(tmp_path, check_every=4)
    m = g.monitor("r")
    pieces = [f" word{i}" for i in range(10)]
    out = _feed_unblocked(m, pieces)
    t, final = m.finish()
    out.append(t)
    assert "".join(out) == "".join(pieces) and final.action == "pass"
    assert m.checks == 3  # after 4, after 8, and the last 2 at the end
    assert [r["action"] for r in audit(tmp_path)] == ["pass"]


def test_monitor_flag_lets_the_answer_finish(tmp_path):
    g = guard(tmp_path, output="flag", check_every=2, words="harm")
    m = g.monitor("r")
    out = _feed_unblocked(m, ["this", " could", " harm", " someone", " badly", " indeed"])
    t, final = m.finish()
    assert "".join(out) + t == "this could harm someone badly indeed"
    assert final.action == "flag" and m.checks == 2  # no scoring after the flag
    assert [r["action"] for r in audit(tmp_path)] == ["flag"]


def run(agen):
    return asyncio.run(collect(agen))


def stream_events(g, text, **kw):
    async def go():
        return [ev async for ev in guarded(BackendEngine(FakeBackend()), g, [{"role": "user", "content": text}],
                                           Sampling(max_tokens=64), "r", **kw)]
    return asyncio.run(go())


def test_pipeline_pass_block_input_and_block_midstream():
    g = guard(check_every=2, words="bomb=weapons,harm")
    ok = run(guarded(BackendEngine(FakeBackend()), g, [{"role": "user", "content": "hello there"}],
                     Sampling(max_tokens=64)))
    assert ok["text"].startswith("Sure, here is a helpful answer to: hello there")
    assert ok["finish_reason"] == "stop" and charter_field(ok["decisions"])["blocked"] is False

    inp = run(guarded(BackendEngine(FakeBackend()), g, [{"role": "user", "content": "build a bomb"}],
                      Sampling(max_tokens=64)))
    assert inp["text"] == decline("weapons") and inp["finish_reason"] == "stop"
    assert charter_field(inp["decisions"]) == {"blocked": True, "direction": "input", "principle": "weapons",
                                               "score": 0.95}

    # The fake backend answers a critique request with a sentence that says "harm" near its end.
    evs = stream_events(g, "critique this request")
    kinds = [e.kind for e in evs]
    assert kinds[0] == "start" and kinds[-2:] == ["block", "end"]
    sent = "".join(e.text for e in evs if e.kind == "text")
    assert sent == "Critique: the response could help someone"
    assert "harm" not in sent and evs[-1].finish_reason == "content_filter"
    assert charter_field([e.decision for e in evs if e.decision])["direction"] == "output"


def test_pipeline_max_tokens_and_stop():
    g = guard(check_every=2, words="zzz")
    r = run(guarded(BackendEngine(FakeBackend()), g, [{"role": "user", "content": "hello there"}],
                    Sampling(max_tokens=3)))
    assert r["text"] == "Sure, here is" and r["finish_reason"] == "length"
    r = run(guarded(BackendEngine(FakeBackend()), g, [{"role": "user", "content": "hello there"}],
                    Sampling(max_tokens=64), stop=("helpful",)))
    assert r["text"] == "Sure, here is a " and r["finish_reason"] == "stop"


def test_text_past_a_stop_sequence_is_never_judged():
    # The whole answer fits in one held chunk, and "harm" comes after the stop sequence: it must not block.
    g = guard(check_every=16, words="harm")
    r = run(guarded(BackendEngine(FakeBackend()), g, [{"role": "user", "content": "critique this request"}],
                    Sampling(max_tokens=64), stop=("could",)))
    assert r["text"] == "Critique: the response " and r["finish_reason"] == "stop"
    assert charter_field(r["decisions"])["blocked"] is False


def test_a_stream_the_client_leaves_still_logs_its_output_verdict(tmp_path):
    g = guard(tmp_path, check_every=2, words="harm", output="flag", input="off")

    async def leave_after_the_flag():
        events = guarded(BackendEngine(FakeBackend()), g, [{"role": "user", "content": "critique this request"}],
                         Sampling(max_tokens=64), "r")
        async for ev in events:
            if ev.kind == "text" and "harm" in ev.text:
                break  # the client goes; the server closes the stream
        await events.aclose()

    asyncio.run(leave_after_the_flag())
    assert [(r["direction"], r["action"]) for r in audit(tmp_path)] == [("output", "flag")]


def test_other_backends_batch_only_requests_with_one_token_budget_and_seed():
    class Recording(FakeBackend):
        def __init__(self):
            super().__init__("fake?delay=0.2")
            self.seen = []

        def generate(self, prompts, params):
            self.seen.append((len(prompts), params.max_new_tokens, params.seed))
            return super().generate(prompts, params)

    backend = Recording()
    engine = BackendEngine(backend)

    async def go():
        async def one(sampling):
            return [p async for p in engine.stream([{"role": "user", "content": "hi"}], sampling, {})]

        first = asyncio.create_task(one(Sampling(max_tokens=2)))  # the engine is busy with this one
        await asyncio.sleep(0.05)
        rest = [one(Sampling(max_tokens=3)), one(Sampling(max_tokens=3)), one(Sampling(max_tokens=5)),
                one(Sampling(max_tokens=3, seed=7))]
        return await asyncio.gather(first, *rest)

    got = asyncio.run(go())
    assert [len(p) for p in got] == [2, 3, 3, 5, 3]
    assert backend.seen[0] == (1, 2, 0) and sorted(backend.seen[1:]) == [(1, 3, 7), (1, 5, 0), (2, 3, 0)]


def test_stop_filter_across_pieces():
    f = StopFilter(["END"])
    out = []
    for p in ["abc E", "N", "D more"]:
        t, hit = f.feed(p)
        out.append(t)
        if hit:
            break
    assert "".join(out) == "abc " and hit


def test_batching_scorer_merges_concurrent_calls():
    class Slow(KeywordScorer):
        def request_harm(self, texts):
            time.sleep(0.05)
            return super().request_harm(texts)

    inner = Slow("bomb", CONST)
    b = BatchingScorer(inner)
    results = {}

    def call(i):
        results[i] = b.request_harm([f"text {i}", "bomb" if i % 2 else "fine"])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == [0.05, 0.95 if i % 2 else 0.05] for i in range(16))
    assert inner.calls < 16  # merged: fewer scoring calls than requests


def test_batching_scorer_fails_only_the_request_it_cannot_score():
    class Picky(KeywordScorer):
        def request_harm(self, texts):
            time.sleep(0.05)  # slow enough that concurrent calls merge
            if any("\ud800" in t for t in texts):
                raise TypeError("not text")
            return super().request_harm(texts)

    inner = Picky("bomb", CONST)
    b = BatchingScorer(inner)
    results = {}

    def call(i):
        try:
            results[i] = b.request_harm(["hi \ud800" if i == 3 else f"text {i}"])
        except TypeError as e:
            results[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    threads[0].start()
    time.sleep(0.01)  # the others queue while the first is scored, so they merge, the bad one among them
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join()
    assert isinstance(results[3], TypeError)
    assert all(results[i] == [0.05] for i in range(8) if i != 3)


def test_a_streamed_row_counts_its_tokens_before_it_finishes():
    """A stop sequence or the output guard ends a response before its row finishes; usage must count
    the tokens generated up to then, not zero."""
    from charter.serve.engines import Job
    from charter.serve.hf_stream import _Row

    class Tok:
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(f"w{i}" for i in ids)

    async def go():
        stats = {}
        row = _Row(Job([], Sampling(max_tokens=10), stats), Tok(), eos={0}, max_context=64)
        for t in (5, 6, 7):
            row.take(t)
        return stats

    assert asyncio.run(go()) == {"completion_tokens": 3}


def test_guard_config_file_errors_name_the_line(tmp_path):
    p = tmp_path / "guard.yaml"
    p.write_text("input: flag\ncheck_evry: 4\n")
    with pytest.raises(CharterError, match=r"guard.yaml:2.*check_evry.*check_every"):
        load_guard_config(str(p))
    p.write_text("input: flag\noutput_threshold: 1.5\n")
    with pytest.raises(CharterError, match="output_threshold"):
        load_guard_config(str(p))
    p.write_text("input: flag\ncheck_every: 4\n")
    cfg = load_guard_config(str(p), check_every=8, output=None)
    assert (cfg.input, cfg.output, cfg.check_every) == ("flag", "block", 8)
    with pytest.raises(CharterError, match="principle"):
        KeywordScorer("bomb=no-such-principle", CONST)


def test_charter_field_without_a_guard():
    assert charter_field([], guarded=False) == {"blocked": False, "direction": None, "principle": None,
                                                "score": None}


def test_guard_from_a_run_directory_builds_that_runs_supervisor(tmp_path, monkeypatch):
    import charter.supervise as supervise
    from charter.config import load_config
    from charter.serve.guard import load_scorer

    cfg = load_config(None, ["seed=3", "constitution=small"])
    (tmp_path / "manifest.json").write_text(json.dumps({"config": cfg.model_dump()}))
    seen = {}

    def fake_from_config(run):
        seen["run"] = run
        return KeywordScorer("bomb", run.constitution)

    monkeypatch.setattr(supervise, "from_config", fake_from_config)
    scorer = load_scorer(str(tmp_path))
    assert isinstance(scorer, KeywordScorer)
    assert seen["run"].cfg.seed == 3 and seen["run"].constitution.name == load_constitution("small").name

    class Judge:  # a supervisor without a request classifier cannot guard
        name = "llm:x"

    monkeypatch.setattr(supervise, "from_config", lambda run: Judge())
    with pytest.raises(CharterError, match="classifier supervisor"):
        load_scorer(str(tmp_path))
    (tmp_path / "data").mkdir()
    with pytest.raises(CharterError, match="not a run directory"):
        load_scorer(str(tmp_path / "data"))
    assert load_scorer("none") is None


def test_guard_config_fields_are_documented():
    from charter.schema import field_docs

    docs = field_docs(GuardConfig)
    assert [n for n in GuardConfig.model_fields if not docs.get(n)] == []
