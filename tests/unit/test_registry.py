import json
import subprocess
import sys

import pytest

from charter.backends import BACKENDS, get_backend
from charter.errors import CharterError
from charter.evals.refusal import JUDGES
from charter.evals.suites import SUITES
from charter.supervise import SUPERVISORS

HEAVY = ("torch", "transformers", "trl", "datasets", "vllm", "llama_cpp", "ray", "fastapi")

# Run in a fresh interpreter: the test session itself has imported torch long before this test.
PROBE = f"""
import json, sys
heavy = {HEAVY!r}
import charter
seen = {{"import charter": [m for m in heavy if m in sys.modules]}}
from charter.backends import BACKENDS
from charter.evals.refusal import JUDGES
from charter.evals.suites import SUITES
from charter.supervise import SUPERVISORS
for reg, spec in [(BACKENDS, "vllm:default"), (BACKENDS, "llamacpp:default"), (BACKENDS, "http://h:1/v1"),
                  (SUPERVISORS, "classifier"), (SUPERVISORS, "ensemble:vllm:default"), (JUDGES, "llm:default"),
                  (SUITES, "xstest")]:
    reg.resolve(spec)
    seen["resolve " + spec] = [m for m in heavy if m in sys.modules]
print(json.dumps(seen))
"""


def test_import_and_resolving_specs_import_no_engine():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    seen = json.loads(out)
    assert len(seen) == 8 and all(mods == [] for mods in seen.values()), seen


def test_specs_resolve_to_their_provider():
    cls, rest = BACKENDS.resolve("vllm:org/model")
    assert (cls.__name__, rest) == ("VLLMBackend", "org/model")
    assert BACKENDS.resolve("./models/sft", fallback="hf")[0].__name__ == "HFBackend"
    assert BACKENDS.resolve("https://h:1/v1?model=m")[0].__name__ == "HTTPBackend"
    assert get_backend("fake?delay=0").name == "fake" and get_backend("fake:b").name == "b"
    assert JUDGES.resolve("llm:default")[1] == "default"
    assert SUPERVISORS.resolve("llm:default:cot")[1] == "default:cot"
    with pytest.raises(CharterError, match=r"unknown refusal judge 'regex' \(use lexical or llm:MODEL\)"):
        JUDGES.resolve("regex")
    with pytest.raises(CharterError, match=r"unknown suite 'nope' \(use dev, xstest, .*prompt JSONL file\)"):
        SUITES.resolve("nope")


def test_trained_models_are_served_by_the_base_models_engine():
    from charter.backends import trained_spec

    assert trained_spec("vllm:default", "run/models/sft") == "vllm:run/models/sft"
    for base in ("default", "hf:org/m", "llamacpp:default", "fake?delay=1", "http://h:1/v1?model=m"):
        assert trained_spec(base, "run/models/sft") == "run/models/sft"
