"""The vLLM backend's request/response mapping, without vLLM or a GPU."""
import subprocess
import sys
from types import SimpleNamespace as NS

import pytest

from charter.backends import GenParams
from charter.backends.vllm import continuation_logprob, pick_options, sampling_kwargs


def test_import_charter_never_imports_engines():
    code = ("import sys, charter, charter.backends, charter.cli; "
            "bad = [m for m in ('vllm', 'llama_cpp', 'torch', 'ray') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sampling_kwargs():
    assert sampling_kwargs(GenParams(max_new_tokens=7, temperature=0.0, seed=3)) == {
        "max_tokens": 7, "temperature": 0.0, "seed": 3}
    kw = sampling_kwargs(GenParams(temperature=0.7, top_p=0.9, seed=1), seed_offset=4)
    assert kw["top_p"] == 0.9 and kw["seed"] == 5


def test_pick_options_reads_decoded_tokens():
    top = {10: NS(logprob=-0.1, decoded_token=" A"), 11: NS(logprob=-2.0, decoded_token="B"),
           12: NS(logprob=-3.0, decoded_token=None)}
    assert pick_options(top, ["A", "B", "C", "Z"], decode=lambda t: {12: "C"}[t]) == [-0.1, -2.0, -3.0, -100.0]


def test_continuation_logprob_sums_only_the_continuation():
    ids = [5, 6, 7, 8]
    plp = [None, {6: NS(logprob=-1.0)}, {7: NS(logprob=-0.5)}, {8: NS(logprob=-0.25)}]
    assert continuation_logprob(plp, ids, n_context_tokens=2) == pytest.approx(-0.75)


def test_missing_vllm_is_a_clear_error():
    pytest.importorskip("charter")
    try:
        import vllm  # noqa: F401
        pytest.skip("vllm is installed here")
    except ImportError:
        pass
    from charter.backends import get_backend
    from charter.errors import CharterError

    with pytest.raises(CharterError, match="vllm package is not installed"):
        get_backend("vllm:default")
