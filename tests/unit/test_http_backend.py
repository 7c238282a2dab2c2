"""The OpenAI-compatible backend against a stub server on loopback."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from charter.backends import GenParams, get_backend, user
from charter.errors import CharterError

pytestmark = pytest.mark.http


class Stub:
    def __init__(self):
        self.requests = []
        self.script = []  # per-request overrides: (status, body bytes)
        self.lock = threading.Lock()


@pytest.fixture
def server():
    stub = Stub()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with stub.lock:
                stub.requests.append((self.path, dict(self.headers), body))
                scripted = stub.script.pop(0) if stub.script else None
            if scripted == "short":  # promises more than it sends, then hangs up
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                self.wfile.write(b'{"choi')
                return
            if scripted:
                status, payload = scripted
            elif body.get("model") != "tiny":
                status, payload = 404, b'{"error": "model not found"}'
            elif body.get("stream"):  # server-sent events, with the token counts only when asked for
                events = [{"choices": [{"delta": {"content": piece}}]} for piece in ("echo", ": x")]
                if (body.get("stream_options") or {}).get("include_usage"):
                    events.append({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}})
                status = 200
                payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"
            elif self.path.endswith("/chat/completions"):
                text = "echo: " + body["messages"][-1]["content"]
                status, payload = 200, json.dumps({"choices": [{"message": {"content": text}}]}).encode()
            else:
                top = {" A": -0.2, " B": -1.7, "C": -3.0}
                status, payload = 200, json.dumps({"choices": [{"logprobs": {"top_logprobs": [top]}}]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    stub.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield stub
    httpd.shutdown()


def backend(server, model="tiny", **kw):
    return get_backend(f"{server.url}?model={model}", **{"backoff": 0.01, **kw})


def test_generate_and_next_token(server, monkeypatch):
    monkeypatch.setenv("CHARTER_API_KEY", "sk-test-secret-123")
    b = backend(server, concurrency=4)
    out = b.generate([user(f"q{i}") for i in range(6)], GenParams(max_new_tokens=5, seed=3))
    assert out == [f"echo: q{i}" for i in range(6)]
    assert all(h.get("Authorization") == "Bearer sk-test-secret-123" for _, h, _ in server.requests)
    assert "sk-test" not in repr(b) and "sk-test" not in b.name
    assert b.next_token_logprobs(["ctx"], ["A", "B", "D"]) == [[-0.2, -1.7, -100.0]]


def test_retries_429_then_succeeds(server):
    server.script = [(429, b"{}"), (503, b"{}")]
    assert backend(server).generate([user("x")], GenParams()) == ["echo: x"]
    assert len(server.requests) == 3


def test_a_half_sent_answer_is_retried(server):
    server.script = ["short"]
    assert backend(server).generate([user("x")], GenParams()) == ["echo: x"]
    assert len(server.requests) == 2


def test_bounded_retries_then_clear_error(server):
    server.script = [(500, b"{}")] * 10
    t0 = time.time()
    with pytest.raises(CharterError, match="no answer after 3 attempts"):
        backend(server, retries=2).generate([user("x")], GenParams())
    assert time.time() - t0 < 5


@pytest.mark.parametrize("status,payload,pattern", [
    (401, b'{"error": "bad key"}', "API key was refused"),
    (200, b"not json at all", "malformed JSON"),
    (200, b'{"choices": []}', "unexpected response shape"),
])
def test_server_faults_are_clear(server, monkeypatch, status, payload, pattern):
    monkeypatch.setenv("CHARTER_API_KEY", "sk-should-not-leak")
    server.script = [(status, payload)]
    with pytest.raises(CharterError, match=pattern) as e:
        backend(server).generate([user("x")], GenParams())
    assert "sk-should-not-leak" not in str(e.value)


def test_unknown_model_and_unreachable_endpoint(server):
    with pytest.raises(CharterError, match="404.*'nope'"):
        backend(server, model="nope").generate([user("x")], GenParams())
    with pytest.raises(CharterError, match="no answer after 2 attempts"):
        get_backend("http://127.0.0.1:9/v1?model=tiny", retries=1, backoff=0.01, timeout=2).generate(
            [user("x")], GenParams())
    with pytest.raises(CharterError, match="name the served model"):
        get_backend("http://127.0.0.1:9/v1")


def test_requests_per_minute_limit(server):
    b = backend(server, rpm=600, concurrency=8)  # one request start every 0.1 s
    t0 = time.time()
    b.generate([user(f"q{i}") for i in range(6)], GenParams())
    assert time.time() - t0 >= 0.45


def test_api_key_never_reaches_outputs(server, tmp_path, monkeypatch, capsys):
    """Run `charter eval` through the HTTP backend with a fake key; grep everything it wrote."""
    from charter.cli import main

    secret = "sk-charter-fake-key-0123456789"
    monkeypatch.setenv("CHARTER_API_KEY", secret)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "1", "prompt": "hello", "label": "benign"}) + "\n")
    out = tmp_path / "out"
    assert main(["-v", "eval", "--model", f"{server.url}?model=tiny", "--prompts", str(prompts), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err
    for f in out.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    assert server.requests and all(h["Authorization"] == f"Bearer {secret}" for _, h, _ in server.requests)


def test_upstream_engine_takes_the_upstreams_token_counts(server):
    import asyncio

    from charter.serve.engines import Sampling, UpstreamEngine

    engine = UpstreamEngine(f"{server.url}?model=tiny")

    async def stream():
        stats = {}
        pieces = [p async for p in engine.stream([{"role": "user", "content": "x"}], Sampling(max_tokens=8), stats)]
        return pieces, stats

    pieces, stats = asyncio.run(stream())
    assert pieces == ["echo", ": x"]
    assert stats["prompt_tokens"] == 7 and stats["completion_tokens"] == 5  # not 2 content chunks
