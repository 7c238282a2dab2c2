import gzip
import json
import os

import pytest

from charter.evals.capability import _code_from, final_number
from charter.evals.helpfulness import win_rate
from charter.evals.sandbox import run_python
from tests.conftest import SHARED


@pytest.mark.reliability
@pytest.mark.parametrize("code,needle", [
    ("import socket\nsocket.socket()", "disabled in the charter sandbox"),
    ("import _socket\n_socket.socket().connect(('127.0.0.1', 22))", "disabled in the charter sandbox"),
    ("open('/tmp/charter-escape-test.txt', 'w').write('x')", "only inside its own directory"),
    ("import os\nos.remove('/etc/hostname')", "only inside its own directory"),
    ("import os\nwhile True:\n    os.fork()", "disabled in the charter sandbox"),
    ("import subprocess\nsubprocess.run(['ls'])", "disabled in the charter sandbox"),
    ("x = bytearray(10 * 1024 ** 3)", "MemoryError"),
])
def test_sandbox_blocks_escapes(code, needle):
    r = run_python(code, timeout_s=10)
    assert not r.ok and needle in r.stderr, r
    assert not os.path.exists("/tmp/charter-escape-test.txt")


@pytest.mark.reliability
def test_sandbox_kills_runaway_code_and_cleans_up(tmp_path):
    r = run_python("while True:\n    pass", timeout_s=3, cpu_s=2)
    assert not r.ok
    r = run_python("import time\ntime.sleep(30)", timeout_s=1)
    assert r.timed_out and not r.ok
    ok = run_python("open('inside.txt', 'w').write('fine')\nprint(open('inside.txt').read())")
    assert ok.ok and ok.stdout.strip() == "fine"


def test_final_number():
    assert final_number("so 5 + 3 = 8\n#### 8") == 8
    assert final_number("It costs 1,234 dollars.") == 1234
    assert final_number("no digits") is None


@pytest.mark.skipif(not (SHARED / "humaneval").exists(), reason="shared HumanEval data not present")
def test_humaneval_canonical_solutions_pass_and_stubs_fail():
    with gzip.open(SHARED / "humaneval" / "HumanEval.jsonl.gz", "rt") as f:
        rows = [json.loads(l) for l in f][:5]
    for r in rows:
        tail = f"\n\n{r['test']}\n\ncheck({r['entry_point']})\n"
        good = _code_from(f"```python\n{r['prompt']}{r['canonical_solution']}```", r["prompt"])
        assert run_python(good + tail).ok, r["task_id"]
        assert not run_python(r["prompt"] + "    pass\n" + tail).ok, r["task_id"]


def test_length_controlled_win_rate_removes_a_pure_length_preference():
    import math

    class PrefersLonger:
        name = "longer"

        def judge(self, items):
            return [{"p_a": 0.5 + 0.4 * math.tanh((len(i["a"].split()) - len(i["b"].split())) / 3)} for i in items]

    n = 60
    aligned = ["word " * (3 + (i % 18)) for i in range(n)]  # mostly longer than the base
    base = ["word " * 9 for _ in range(n)]
    res = win_rate(PrefersLonger(), ["p"] * n, aligned, base)
    assert res["n"] == n and res["win_rate"] > 0.55
    assert abs(res["length_controlled"] - 0.5) < 0.06
