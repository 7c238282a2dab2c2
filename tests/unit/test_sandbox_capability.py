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


def test_choice_and_mbpp_suites_from_local_files(tmp_path, monkeypatch):
    from charter.backends import get_backend
    from charter.evals.capability import evaluate_capability

    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text("".join(json.dumps({"question": f"q{i}?", "choices": ["a", "b", "c", "d"], "answer": i % 4}) + "\n"
                            for i in range(8)))
    gpqa = tmp_path / "gpqa.jsonl"
    gpqa.write_text(json.dumps({"Question": "q?", "Correct Answer": "yes", "Incorrect Answer 1": "no",
                                "Incorrect Answer 2": "maybe", "Incorrect Answer 3": "never"}) + "\n")
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text(json.dumps({"task_id": 1, "prompt": "Write add(a, b).", "test_list": ["assert add(1, 2) == 3"]})
                    + "\n")
    for name, path in (("MMLU", mmlu), ("GPQA", gpqa), ("MBPP", mbpp)):
        monkeypatch.setenv(f"CHARTER_{name}", str(path))
    fake = get_backend("fake")
    m = evaluate_capability(fake, "mmlu", tmp_path / "out" / "mmlu.jsonl")
    assert m["n"] == 8 and m["metric"] == "accuracy" and 0 <= m["score"] <= 1
    assert evaluate_capability(fake, "gpqa", tmp_path / "out" / "gpqa.jsonl")["n"] == 1
    r = evaluate_capability(fake, "mbpp", tmp_path / "out" / "mbpp.jsonl")
    assert r["n"] == 1 and r["score"] == 0.0 and r["metric"] == "pass@1"  # the fake writes prose, not code
    calls = fake.calls["next_token_logprobs"]
    evaluate_capability(fake, "mmlu", tmp_path / "out" / "mmlu.jsonl")
    assert fake.calls["next_token_logprobs"] == calls  # cached per item


def test_missing_capability_suite_names_path_and_hub(tmp_path, monkeypatch):
    from charter.backends import get_backend
    from charter.errors import CharterError
    from charter.evals.capability import evaluate_capability

    monkeypatch.setenv("CHARTER_SHARED_DATA", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CharterError, match=r"'mmlu': not found at .* and the hub dataset 'cais/mmlu'"):
        evaluate_capability(get_backend("fake"), "mmlu", tmp_path / "x.jsonl")


def test_a_whole_function_reply_keeps_the_prompts_imports_and_any_fence():
    prompt = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n'
    reply = "```py\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```\nThis adds them up."
    program = _code_from(reply, prompt)
    assert "This adds" not in program
    assert run_python(program + "\nassert total([1, 2]) == 3\n").ok


class Answers:
    """A backend that gives one fixed answer to every prompt."""
    name = "answers"

    def __init__(self, text):
        self.text = text

    def generate(self, prompts, params):
        return [self.text] * len(prompts)


def test_a_program_that_exits_before_its_tests_does_not_pass(tmp_path, monkeypatch):
    from charter.evals.capability import evaluate_capability

    suite = tmp_path / "he.jsonl"
    suite.write_text(json.dumps({"task_id": "t/0", "prompt": "def add(a, b):\n", "entry_point": "add",
                                 "test": "def check(f):\n    assert f(1, 2) == 3\n"}) + "\n")
    monkeypatch.setenv("CHARTER_HUMANEVAL", str(suite))
    quits = Answers("```python\nimport sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n```")
    assert evaluate_capability(quits, "humaneval", tmp_path / "a.jsonl")["score"] == 0.0
    right = Answers("```python\ndef add(a, b):\n    return a + b\n```")
    assert evaluate_capability(right, "humaneval", tmp_path / "b.jsonl")["score"] == 1.0


def test_gsm8k_demonstrations_drop_the_calculator_notes(tmp_path, monkeypatch):
    from charter.evals.capability import gsm8k_items

    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "How many?", "answer": "She sold 48/2 = <<48/2=24>>24 clips.\n#### 24"})
                    + "\n")
    monkeypatch.setenv("CHARTER_GSM8K", str(data))
    shot = gsm8k_items(shots=1)[0]["messages"][1]["content"]
    assert shot == "She sold 48/2 = 24 clips.\n#### 24"


def test_harmbench_validation_has_no_hub_fallback(tmp_path, monkeypatch):
    """The hub copy holds HarmBench's test behaviours too, which must never choose the supervisor's threshold."""
    from charter.errors import CharterError
    from charter.evals.suites import load_suite

    monkeypatch.setenv("CHARTER_SHARED_DATA", str(tmp_path))
    with pytest.raises(CharterError, match=r"'harmbench-val': not found at .*\(set CHARTER_SHARED_DATA\)$"):
        load_suite("harmbench-val")
