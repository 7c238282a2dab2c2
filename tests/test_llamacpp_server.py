"""The HTTP backend against a real `python -m llama_cpp.server` on loopback, serving the embedded GGUF."""
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.http, pytest.mark.slow]
llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the `llamacpp` extra) is not installed")


def _free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python was built without its server extra")
    from charter.models import default_gguf

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(default_gguf()),
                             "--host", "127.0.0.1", "--port", str(port), "--model_alias", "smollm2",
                             "--n_ctx", "2048", "--logits_all", "true"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail("llama_cpp.server exited during start-up")
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}/v1"
    proc.terminate()
    proc.wait(timeout=30)


def test_generate_and_score_against_llamacpp(server):
    from charter.backends import GenParams, get_backend, user

    b = get_backend(f"{server}?model=smollm2", concurrency=2)
    out = b.generate([user("What is 2 + 2?"), user("Name a colour.")], GenParams(max_new_tokens=16, temperature=0))
    assert len(out) == 2 and all(isinstance(t, str) and t for t in out)
    lp = b.next_token_logprobs(["The answer is: ("], ["A", "B"])
    assert len(lp[0]) == 2 and max(lp[0]) > -100
