"""Stage tests on a tiny random Llama built in the test: one run of every stage checks what spans
stages (weights change, records carry their fields, reruns resume); tests of one stage seed the records
that stage reads and run it alone."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from charter import records
from charter.config import load_config
from charter.run import Run, pipeline
from charter.stages import common, evaluate
from tests.conftest import SHARED

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 64-wide model gains nothing from intra-op threads, and on a busy CPU they spin against each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_cfg(tmp_path, model, extra=()):
    p = tmp_path / "tiny.yaml"
    p.write_text("# charter run tiny.yaml --out DIR\n")
    return load_config(p, [*tiny_overrides(model), *extra])


def tiny_overrides(model):
    return [
        # cache=false: every test generates for real (tests/stages/test_generation_cache.py tests the cache)
        f"model={model}", "device=cpu", "cache=false",
        "pools.redteam.limit=6", "pools.helpful.limit=3", "pools.lookalike.limit=3",
        "generate.max_new_tokens=8", "generate.batch_size=4",
        "revise.rounds=2", "revise.min_keep=0", "revise.critique_tokens=6", "revise.revision_tokens=8", "revise.batch_size=4",
        "sft.max_steps=2", "sft.batch_size=4", "sft.lr=1e-3", "sft.max_length=128",
        "pairs.max_pairs=8", "pairs.max_new_tokens=8", "pairs.batch_size=4",
        "supervisor.kind=llm", f"supervisor.model={model}", "supervisor.threshold=0.0", "supervisor.max_gap=1.0",
        "supervisor.hh_limit=20",
        "dpo.max_steps=2", "dpo.batch_size=4", "dpo.lr=1e-3", "dpo.margin=0.0", "dpo.max_length=128",
        "evaluate.limit=2", "evaluate.max_new_tokens=8", *SUITES]


# With the shared data present, the evaluate stage also runs a public suite and a capability suite.
SUITES = (["evaluate.suites=[xstest, advbench]", "evaluate.suite_limit=3", "evaluate.capability=[gsm8k, humaneval]",
           "evaluate.capability_limit=2"] if SHARED.exists() else [])


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def seed(run, rel, rows, stage):
    """Write records as the stage that owns `rel` would have, so a later stage can run alone."""
    common.rewrite(run, rel, rows, stage)


def seed_generate(run):
    seed(run, common.GENERATE, [{**p, "response": f"Here is a short answer about {p['category']}.", "model": "base"}
                                for p in common.train_prompts(run)], "generate")


def seed_calibration(run, accuracy=1.0):
    acc = {"n": 10, "accuracy": accuracy}
    records.write_json(run.path(common.CALIBRATION), {"supervisor": "seeded", "contrast": {
        "harmful": acc, "benign": acc, "overall": acc}, "position_bias": 0.0, "ece": 0.0, "pairs_per_s": 1.0})


def pair_rows(run):
    keep = ("id", "prompt", "label", "category", "pool")
    return [{k: p[k] for k in keep} | {"id": f"{p['id']}#0", "a": "I can't help with that.",
                                        "b": f"Sure: {p['prompt'][:20]}", "model": "models/sft"}
            for p in common.train_prompts(run)]


def changed(a, b):
    return any(not torch.equal(a[k], b[k]) for k in a if k in b)


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    cfg = tiny_cfg(tmp, tiny_model)
    run = Run(cfg, tmp / "out")
    run.execute()
    return run, cfg, tmp


def test_all_stages_finish_and_write_artifacts(finished_run):
    run, _, _ = finished_run
    m = json.loads(run.path("manifest.json").read_text())
    assert [s for s in m["stages"] if m["stages"][s]["status"] == "done"] == pipeline(run.cfg)
    assert "rl" not in m["stages"]  # off unless rl.enabled
    assert m["final_model"] == "models/dpo"
    assert m["constitution_hash"] == run.constitution.hash and m["config_hash"] == run.cfg.hash()
    for rel in ("models/sft/model.safetensors", "models/dpo/model.safetensors", "eval/metrics.json",
                "report.html", "supervisor/calibration.json"):
        assert run.path(rel).exists(), rel
    metrics = json.loads(run.path("eval/metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "sft", "dpo"}
    assert metrics["models"]["base"]["n"]["harmful"] > 0
    assert set(metrics["helpfulness"]) == {"sft", "dpo"}
    assert 0 <= metrics["helpfulness"]["dpo"]["win_rate"] <= 1
    # The report's cards show failures too: a harmful request the final model still answers gets one.
    dpo = records.read(run.path("eval/responses_dpo.jsonl"))
    for label, refused, name in evaluate.OUTCOMES:
        happened = any(r["label"] == label and (r["refusal"] != "full_compliance") == refused for r in dpo)
        assert happened == any(e["outcome"] == name for e in metrics["examples"]), name
    if SUITES:
        assert metrics["suites"]["xstest"]["dpo"]["n"]["harmful"] + metrics["suites"]["xstest"]["dpo"]["n"]["benign"] == 3
        assert metrics["suites"]["advbench"]["base"]["n"]["harmful"] == 3  # not in this run's pools
        assert metrics["capability"]["gsm8k"]["sft"]["n"] == 2
        assert metrics["capability"]["humaneval"]["dpo"]["metric"] == "pass@1"
        html = run.path("report.html").read_text()
        assert "xstest: harmful refused" in html and "gsm8k: exact match" in html


def test_run_directory_is_safe_to_share(finished_run):
    """No world-writable paths, and nothing stored with pickle (records are JSON, models safetensors)."""
    run, _, _ = finished_run
    for p in [run.dir, *run.dir.rglob("*")]:
        assert not p.stat().st_mode & 0o002, p
        assert p.suffix not in (".pkl", ".pickle", ".pt", ".bin", ".pth"), p
    m = json.loads(run.path("manifest.json").read_text())
    assert m["config"]["trust_remote_code"] is False


def test_training_changed_the_weights(finished_run, tiny_model):
    run, _, _ = finished_run
    base, sft, dpo = weights(tiny_model), weights(run.path("models/sft")), weights(run.path("models/dpo"))
    assert changed(base, sft) and changed(sft, dpo)
    m = json.loads(run.path("manifest.json").read_text())
    assert m["stages"]["sft"]["steps"] == 2 and m["stages"]["dpo"]["steps"] == 2


def test_records_carry_their_fields(finished_run):
    run, _, _ = finished_run
    need = {"generate": {"id", "prompt", "response", "label", "category"},
            "revise": {"id", "initial", "rounds", "revision", "revision_source"},
            "pairs": {"id", "prompt", "a", "b"},
            "labels": {"id", "p_a", "p_ab", "p_ba", "principles", "supervisor"}}
    for name, fields in need.items():
        rows = records.read(run.path(f"data/{name}.jsonl"))
        assert rows, name
        for r in rows:
            assert fields <= set(r), (name, fields - set(r))
            assert r["constitution"] == run.constitution.hash and r["config"] == run.cfg.hash()
    for r in records.read(run.path("data/revise.jsonl")):
        assert len(r["rounds"]) == 2 and all({"principle", "critique", "revision"} <= set(x) for x in r["rounds"])
    for r in records.read(run.path("data/labels.jsonl")):
        assert 0.0 <= r["p_a"] <= 1.0


def test_rerun_redoes_nothing(finished_run):
    run, cfg, tmp = finished_run
    before = {p: p.stat().st_mtime_ns for p in run.dir.rglob("*.jsonl")}
    again = Run(cfg, run.dir)
    again.execute()
    assert {p: p.stat().st_mtime_ns for p in run.dir.rglob("*.jsonl")} == before


def test_changed_config_is_refused_without_restart(finished_run, tiny_model):
    from charter.errors import CharterError

    run, _, tmp = finished_run
    other = tiny_cfg(tmp, tiny_model, ["seed=5"])
    with pytest.raises(CharterError, match="different config"):
        Run(other, run.dir).execute()


def test_died_stage_resumes_from_last_record(tiny_model, tmp_path):
    cfg = tiny_cfg(tmp_path, tiny_model)
    run = Run(cfg, tmp_path / "out")
    run.execute(stages=["generate"])
    path = run.path("data/generate.jsonl")
    full = records.read(path)
    # Simulate a crash mid-stage: half the records and a torn line, stage still "running".
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:10])
    run.manifest["stages"]["generate"]["status"] = "running"
    run.save_manifest()
    resumed = Run(cfg, run.dir)
    resumed.execute(stages=["generate"])
    rows = records.read(path)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in full)
    assert [r["response"] for r in rows[:4]] == [r["response"] for r in full[:4]]


def test_gate_blocks_labels_unless_forced(tiny_model, tmp_path):
    from charter.errors import CharterError

    cfg = tiny_cfg(tmp_path, tiny_model, ["supervisor.threshold=1.01"])
    run = Run(cfg, tmp_path / "out")
    with pytest.raises(CharterError, match=r"stage label: .*calibration.json is missing; the supervise stage writes it"):
        run.execute(stages=["label"])
    seed_calibration(run, accuracy=0.95)
    seed(run, common.PAIRS, pair_rows(run), "pairs")
    with pytest.raises(CharterError, match="failed the calibration gate"):
        Run(cfg, tmp_path / "out").execute(stages=["label"])
    assert not (tmp_path / "out" / "data" / "labels.jsonl").exists()
    run = Run(cfg, tmp_path / "out", force=True)
    run.execute(stages=["label"])
    assert records.read(run.path("data/labels.jsonl"))
    m = json.loads(run.path("manifest.json").read_text())
    assert m["forced"] is True and "failed the calibration gate" in m["gate_override"]


def test_records_load_with_datasets(finished_run):
    import datasets

    run, _, _ = finished_run
    for path in sorted(run.path("data").glob("*.jsonl")):
        ds = datasets.load_dataset("json", data_files=str(path), split="train")
        assert len(ds) == len(records.read(path)), path.name


def test_family_runs_each_tier_and_writes_one_table(tiny_model, tmp_path):
    import yaml

    from charter.family import run_family

    overrides = [o for o in tiny_overrides(tiny_model) if not o.startswith("model=")]
    overrides += ["evaluate.suites=[]", "evaluate.capability=[]", "evaluate.models=[base, dpo]"]
    (tmp_path / "run.yaml").write_text("# charter run run.yaml --out DIR\nseed: 0\n")
    (tmp_path / "family.yaml").write_text(yaml.safe_dump({
        "run": "run.yaml", "overrides": overrides, "suites": ["dev"], "limit": 4,
        "members": [{"name": "a", "model": str(tiny_model)},
                    {"name": "b", "model": str(tiny_model), "overrides": ["sft.max_steps=1"]}]}))
    expected = {"a": tiny_cfg(tmp_path, tiny_model, overrides[-3:]).hash(),
                "b": tiny_cfg(tmp_path, tiny_model, [*overrides[-3:], "sft.max_steps=1"]).hash()}
    for name in ("a", "b"):  # each tier's supervisor counts as calibrated: that stage has its own tests
        member = Run(tiny_cfg(tmp_path, tiny_model), tmp_path / "out" / name)
        seed_calibration(member)
        records.write_json(member.manifest_path, {"stages": {"supervise": {"status": "done"}}})
    res = run_family(tmp_path / "family.yaml", tmp_path / "out")
    for name, cfg_hash in expected.items():  # each tier ran its own config: the family's plus its overrides
        assert json.loads((tmp_path / "out" / name / "manifest.json").read_text())["config_hash"] == cfg_hash
    assert len(res["models"]) == 3  # the shared base once, then each tier's aligned model
    table = (tmp_path / "out" / "compare" / "table.md").read_text().splitlines()
    assert len(table[0].split("|")) == 2 + 3 + 1
    for name in ("a", "b"):
        assert (tmp_path / "out" / name / "models" / "dpo" / "model.safetensors").exists()


def test_training_runs_under_accelerate_launch_on_one_cpu_process(finished_run, tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    run, cfg, _ = finished_run
    work = tmp_path / "run"
    shutil.copytree(run.dir, work)
    root = Path(__file__).resolve().parents[2]
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    assert accelerate, "accelerate is installed with trl"
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text("# charter run tiny.yaml --out DIR\n")
    overrides = tiny_overrides(cfg.model)
    before = weights(work / "models" / "sft")
    r = subprocess.run([accelerate, "launch", "--config_file", str(root / "configs" / "accelerate" / "cpu.yaml"),
                        "-m", "charter.cli", "run", str(cfg_file), "--out", str(work), "--restart", "sft",
                        "--stages", "sft", *overrides, "sft.lr=5e-3"], capture_output=True, text=True,
                       timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert changed(before, weights(work / "models" / "sft"))
    m = json.loads((work / "manifest.json").read_text())
    assert m["stages"]["sft"]["status"] == "done" and m["stages"]["dpo"]["status"] == "pending"


def test_base_side_pairs_and_balanced_dpo(tiny_model, tmp_path):
    from charter.stages.dpo import balanced

    cfg = tiny_cfg(tmp_path, tiny_model, ["pairs.base_side=true", "dpo.balance=true"])
    run = Run(cfg, tmp_path / "out")
    seed_generate(run)
    shutil.copytree(tiny_model, run.path(common.SFT_MODEL))  # the SFT model: here, the base itself
    run.execute(stages=["pairs"])
    base = {r["id"]: r["response"] for r in records.read(run.path("data/generate.jsonl"))}
    pairs = records.read(run.path("data/pairs.jsonl"))
    assert pairs and all(p["b"] == base[p["id"].rsplit("#", 1)[0]] for p in pairs)
    assert not (run.path("data/pairs_b.jsonl")).exists()  # no second SFT sample was drawn
    seed(run, common.LABELS, [p | {"p_a": 0.8 if i % 2 else 0.2, "principles": ["seeded"], "supervisor": "seeded"}
                              for i, p in enumerate(pairs)], "label")
    run.execute(stages=["dpo"])
    assert changed(weights(tiny_model), weights(run.path(common.DPO_MODEL)))
    used = records.read(run.path("data/dpo.jsonl"))
    n = {lab: sum(r["label"] == lab for r in used) for lab in ("harmful", "benign")}
    assert n["harmful"] == n["benign"] > 0
    # balanced() subsamples only the larger side.
    rows = [{"id": str(i), "label": "harmful" if i < 7 else "benign"} for i in range(10)]
    kept = balanced(rows, 0)
    assert sum(r["label"] == "harmful" for r in kept) == 3 and sum(r["label"] == "benign" for r in kept) == 3


def test_bfloat16_generates_in_bfloat16_and_trains_float32_weights(tiny_model, tmp_path, monkeypatch):
    """`precision: bfloat16`: the policy generates in bfloat16; training autocasts, and saves float32 weights."""
    from charter import train

    run = Run(tiny_cfg(tmp_path, tiny_model, ["precision=bfloat16"]), tmp_path / "out")
    assert run.backend("base").dtype == torch.bfloat16 and run.precision() == "bfloat16"
    assert Run(tiny_cfg(tmp_path, tiny_model, ["precision=float32"]), tmp_path / "out32").backend(
        "base").dtype == torch.float32
    made, real = [], train.trl_args
    monkeypatch.setattr(train, "trl_args", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    shutil.copytree(tiny_model, run.path(common.SFT_MODEL))
    pairs = pair_rows(run)
    seed(run, common.PAIRS, pairs, "pairs")
    seed(run, common.LABELS, [p | {"p_a": 0.9, "principles": ["seeded"], "supervisor": "seeded"} for p in pairs],
         "label")
    run.execute(stages=["dpo"])
    assert [a.bf16 for a in made] == [True] and run.manifest["precision"] == "bfloat16"
    trained = weights(run.path(common.DPO_MODEL))
    assert changed(weights(tiny_model), trained) and {t.dtype for t in trained.values()} == {torch.float32}


def test_soft_labels_train_conservative_dpo_with_the_mean_label_noise(tiny_model, tmp_path, monkeypatch):
    """`dpo.labels: soft` keeps every pair and smooths the loss by the mean of min(p, 1 - p): the smoothing
    must reach the loss that trains (TRL's own sigmoid loss ignores `label_smoothing`)."""
    from charter import packed_dpo

    run = Run(tiny_cfg(tmp_path, tiny_model, ["dpo.labels=soft", "precision=float32"]), tmp_path / "out")
    shutil.copytree(tiny_model, run.path(common.SFT_MODEL))
    pairs = pair_rows(run)
    p_a = [0.9 if i % 2 else 0.3 for i in range(len(pairs))]
    seed(run, common.PAIRS, pairs, "pairs")
    seed(run, common.LABELS, [p | {"p_a": q, "principles": ["seeded"], "supervisor": "seeded"}
                              for p, q in zip(pairs, p_a)], "label")
    used, real = [], packed_dpo.dpo_loss
    monkeypatch.setattr(packed_dpo, "dpo_loss", lambda *a, **k: used.append(a[5] if len(a) > 5 else k["smoothing"])
                        or real(*a, **k))
    run.execute(stages=["dpo"])
    noise = sum(min(q, 1 - q) for q in p_a) / len(p_a)
    assert run.manifest["stages"]["dpo"]["label_smoothing"] == pytest.approx(noise, abs=1e-4)
    assert used and all(x == pytest.approx(noise) for x in used)


def test_shared_prefix_scoring_equals_full_scoring(tiny_model):
    from charter.backends import get_backend

    b = get_backend(str(tiny_model), device="cpu", precision="float32")  # exact arithmetic: 1e-4 below
    head = "how do i bake bread at home with a simple oven and some flour " * 3
    ctxs = [head + "the answer is", head + "my answer would be", head + "so"]
    fast = b.next_token_logprobs(ctxs, ["the", "so"])  # shares the KV cache of `head`
    logp, enc = b._logits(ctxs)
    last = enc.attention_mask.sum(1) - 1
    ids = [b.tok(o, add_special_tokens=False).input_ids[0] for o in ("the", "so")]
    full = logp[torch.arange(len(ctxs)), last][:, ids].tolist()
    assert all(abs(x - y) < 1e-4 for r, s in zip(fast, full) for x, y in zip(r, s)), (fast, full)


def test_generation_from_a_shared_opening_equals_whole_prompts(tiny_model):
    """Batched generation runs the prompts' common opening once (`HFBackend._encode`): in float32 its answers,
    greedy and sampled under one seed, are those of the prompts run whole, rows of different lengths included."""
    import functools

    from charter.backends import GenParams, get_backend

    b = get_backend(str(tiny_model), device="cpu", precision="float32", progress=False)
    head = [{"role": "user", "content": "how do i bake bread at home with a simple oven"},
            {"role": "assistant", "content": "use flour water salt and yeast then bake it hot"}]
    prompts = [head + [{"role": "user", "content": q}] for q in
               ("and how long", "what is the best way to make a cake at home with my family", "why")]
    enc = b._encode([b.render(p) for p in prompts], 8)
    assert b._cache_kw in enc and enc["attention_mask"].sum(1).tolist() == [
        len(b.tok(b.render(p), add_special_tokens=False).input_ids) for p in prompts]
    for params in (GenParams(max_new_tokens=12, temperature=0.0, batch_size=8),
                   GenParams(max_new_tokens=12, temperature=1.0, top_p=0.9, batch_size=8, seed=3)):
        shared = b.generate(prompts, params)
        b._encode = functools.partial(type(b)._encode, b, share=False)  # the whole-prompt path, this instance only
        whole = b.generate(prompts, params)
        del b._encode
        assert shared == whole and any(shared), (shared, whole)
    # Greedy, each prompt alone (no padding, nothing shared) is the reference for both layouts.
    greedy = GenParams(max_new_tokens=12, temperature=0.0, batch_size=8)
    assert b.generate(prompts, greedy) == [b.generate([p], greedy)[0] for p in prompts]
    # Prompts that do not open alike are run whole.
    assert b._cache_kw not in b._encode([b.render([{"role": "user", "content": "hi"}]), "why so"], 8)


def test_decoding_drops_each_row_once_it_has_ended_and_keeps_generates_tokens(tiny_model):
    """`hf.decode` leaves finished rows behind (the batch shrinks as rows end), yet each row's tokens, from a
    shared opening and left padding, are the ones transformers' `generate` gives for the same batch."""
    from charter.backends import get_backend, hf

    b = get_backend(str(tiny_model), device="cpu", precision="float32", progress=False)
    with torch.no_grad():  # sharper attention than random init's near-uniform one, so positions tell
        for layer in b.model.model.layers:
            layer.self_attn.q_proj.weight *= 8
            layer.self_attn.k_proj.weight *= 8
    head = [{"role": "user", "content": "how do i bake bread at home with a simple oven"}]
    prompts = [head + [{"role": "assistant", "content": "flour"}, {"role": "user", "content": q}] for q in
               ("and how long", "what is the best way to make a cake at home with my family", "why",
                "tell me a story about a cat", "is it safe")]
    texts = [b.render(p) for p in prompts]

    def generate(eos):
        enc = b._encode(texts, 16)
        out = b.model.generate(**enc, max_new_tokens=16, do_sample=False, eos_token_id=eos,
                               pad_token_id=b.tok.pad_token_id)
        return out[:, enc["input_ids"].shape[1]:].tolist()

    free = generate(None)
    # End-of-sequence ids that end the rows at different steps: a token of each row's, where it first appears.
    eos = {row[i] for i, row in zip((2, 5, 9, 13, 7), free) if row[i] not in row[:i]}
    want = generate(sorted(eos))
    assert b.decodes_alone and b._cache_kw in b._encode(texts, 16)  # the shared opening's path
    widths = []
    hook = b.model.register_forward_pre_hook(lambda m, a, kw: widths.append(len(kw["input_ids"])), with_kwargs=True)
    try:
        got = hf.decode(b.model, b._encode(texts, 16), 16, hf.next_token(0, None), eos)
    finally:
        hook.remove()
    ended = [next((i + 1 for i, t in enumerate(row) if t in eos), 16) for row in want]
    assert [len(row) for row in got] == ended and len(set(ended)) > 2, (ended, got)
    assert got == [row[:n] for row, n in zip(want, ended)]
    # One forward per step, each as wide as the rows not yet ended.
    assert widths == [len(texts)] + [sum(n > step for n in ended) for step in range(1, max(ended))], widths


def test_rows_that_join_a_running_batch_decode_as_they_would_alone(tiny_model):
    """`hf.Rows` takes new rows into a batch mid-decode (its states left-padded, or theirs, to one width) and
    lets rows go, the columns only they needed with them; each row's greedy tokens are its tokens alone."""
    from charter.backends import get_backend, hf

    b = get_backend(str(tiny_model), device="cpu", precision="float32", progress=False)
    with torch.no_grad():  # sharper attention than random init's, so a misplaced position or column tells
        for layer in b.model.model.layers:
            layer.self_attn.q_proj.weight *= 8
            layer.self_attn.k_proj.weight *= 8
    asks = {"a0": "why", "a1": "what is the best way to make a cake at home with my family and friends",
            "a2": "tell me a story", "b0": "how do i bake bread at home with a simple oven and some flour and water "
            "and salt and yeast and a little time", "b1": "is it safe", "c0": "and how"}
    texts = {k: b.render([{"role": "user", "content": q}]) for k, q in asks.items()}
    length = {"a0": 12, "a1": 2, "a2": 12, "b0": 10, "b1": 6, "c0": 8}  # tokens each row decodes
    greedy = hf.next_token(0, None)
    alone = {k: hf.decode(b.model, b._encode([t], 12), length[k], greedy, set()) for k, t in texts.items()}
    rows, live, out, widths, trimmed = hf.Rows(b.model), [], {}, [], 0

    def admit(names):
        rows.join(b._encode([texts[n] for n in names], 12))
        live.extend(names)

    admit(["a0", "a1", "a2"])
    for step in range(40):
        if not live:
            break
        token = greedy(rows.logits.float())
        for n, t in zip(live, token.tolist()):
            out.setdefault(n, []).append(t)
        going = torch.tensor([len(out[n]) < length[n] for n in live])
        before = rows.mask.shape[1]
        rows.keep(going)
        live[:] = [n for n, g in zip(live, going.tolist()) if g]
        if live:
            trimmed += rows.mask.shape[1] < before
            assert rows.mask[:, 0].any()  # no column that is padding in every row is kept
            rows.step(token[going])
            widths.append(len(rows.mask))
            assert rows.mask.shape[1] == rows.cache.get_seq_length()
        if step == 2:
            admit(["b0", "b1"])  # b0 is longer than the running batch: the running states are padded
        if step == 6:
            admit(["c0"])  # shorter than the running batch: its states are padded
    assert out == {k: v[0] for k, v in alone.items()}
    # a1, the longest prompt of the first three, left before b's two joined; then b0, the longest of all.
    assert widths[:3] == [3, 2, 2] and max(widths) == 5 and trimmed == 2, (widths, trimmed)


def generate_alone(b, p, n=12):
    """transformers' `generate` on one prompt, greedy, as the batch's row would be decoded alone."""
    enc = b._encode([b.render(p)], n, share=False)
    out = b.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=b.tok.pad_token_id)
    return b.tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_generation_config_processors_apply_to_each_row_as_generate_applies_them_alone(tiny_model):
    """A generation config's logits processors that `hf.Rows` applies itself (a repetition penalty, suppressed
    tokens, a minimum length) keep the model on charter's decode loop, and each row of a padded batch gets
    the tokens `generate` gives it alone, processors applied."""
    from charter.backends import GenParams, get_backend, hf

    b = get_backend(str(tiny_model), device="cpu", precision="float32", progress=False)
    with torch.no_grad():  # sharper attention than random init's, so a misplaced position tells
        for layer in b.model.model.layers:
            layer.self_attn.q_proj.weight *= 8
            layer.self_attn.k_proj.weight *= 8
    prompts = [[{"role": "user", "content": q}] for q in
               ("how do i bake bread at home", "why", "what is the best way to make a cake with my family")]
    greedy = GenParams(max_new_tokens=12, temperature=0.0, batch_size=8)
    plain = b.generate(prompts, greedy)
    banned = [b.tok(t.split()[0], add_special_tokens=False).input_ids[0] for t in plain]
    config = b.model.generation_config
    config.repetition_penalty, config.suppress_tokens, config.min_new_tokens = 1.8, banned, 3
    penalised = hf.HFBackend(str(tiny_model), model=b.model, tokenizer=b.tok, progress=False)
    assert penalised.decodes_alone
    got = penalised.generate(prompts, greedy)

    assert got == [generate_alone(b, p) for p in prompts] and got != plain, (got, plain)
    assert all(b.tok(t.split()[0], add_special_tokens=False).input_ids[0] not in banned for t in got), got
    # The processors read each row's own history: its prompt without padding, then its tokens.
    enc = b._encode([b.render(p) for p in prompts], 12, share=False)
    rows = hf.Rows(b.model, b.eos)
    rows.join(enc)
    token = rows.scores().argmax(-1)
    rows.step(token)
    for h, ids, m, t in zip(rows.history, enc["input_ids"], enc["attention_mask"], token):
        assert h.tolist() == ids[m.bool()].tolist() + [int(t)]
    assert len({len(h) for h in rows.history}) == 3  # the prompts differ in length, so padding would show
    rows.joinable = False  # as for a cache that cannot take rows: refused before the prefill, nothing changed
    calls = []
    hook = b.model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError):
        rows.join(enc)
    hook.remove()
    assert not calls and len(rows) == len(rows.history) == len(rows.processors) == 3


@pytest.mark.parametrize("field", ["bad_words_ids", "sequence_bias", "no_repeat_ngram_size", "begin_suppress_tokens"])
def test_each_other_row_processor_matches_generate_alone(tiny_model, field):
    """The rest of `hf.ROW_PROCESSORS`, one at a time, each set to change the plain answers."""
    from charter.backends import GenParams, get_backend, hf

    b = get_backend(str(tiny_model), device="cpu", precision="float32", progress=False)
    prompts = [[{"role": "user", "content": q}] for q in
               ("how do i bake bread at home", "why", "what is the best way to make a cake")]
    greedy = GenParams(max_new_tokens=12, temperature=0.0, batch_size=8)
    plain = b.generate(prompts, greedy)
    firsts = [b.tok(t.split()[0], add_special_tokens=False).input_ids[0] for t in plain]
    setattr(b.model.generation_config, field, {"bad_words_ids": [[t] for t in firsts], "no_repeat_ngram_size": 1,
                                               "sequence_bias": {(t,): -100.0 for t in firsts},
                                               "begin_suppress_tokens": firsts}[field])
    processed = hf.HFBackend(str(tiny_model), model=b.model, tokenizer=b.tok, progress=False)
    assert processed.decodes_alone
    got = processed.generate(prompts, greedy)

    assert got == [generate_alone(b, p) for p in prompts] and got != plain, (got, plain)


def test_models_that_decode_cannot_run_alone_decode_through_generate(tiny_model):
    """A generation config asking for something `decode` does not do (a forced end-of-sequence token), or a
    cache whose rows cannot be dropped (linear attention), sends the model through transformers' `generate`."""
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    from charter.backends import GenParams, get_backend, hf

    b = get_backend(str(tiny_model), device="cpu", precision="float32", progress=False)
    prompts = [[{"role": "user", "content": q}] for q in ("how do i bake bread at home", "why is the sky blue")]
    greedy = GenParams(max_new_tokens=12, temperature=0.0, batch_size=8)
    plain = b.generate(prompts, greedy)
    b.model.generation_config.forced_eos_token_id = sorted(b.eos)[0]  # `generate` ends every row with it
    forced = hf.HFBackend(str(tiny_model), model=b.model, tokenizer=b.tok, progress=False)
    assert not forced.decodes_alone
    got = forced.generate(prompts, greedy)
    enc = b._encode([b.render(p) for p in prompts], 12)
    want = b.model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=b.tok.pad_token_id)
    assert got == [t.strip() for t in b.tok.batch_decode(want[:, enc["input_ids"].shape[1]:],
                                                            skip_special_tokens=True)]
    assert got != plain, got  # the last token was forced
    linear = Qwen3NextForCausalLM(Qwen3NextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, linear_num_value_heads=2, linear_num_key_heads=1,
        linear_key_head_dim=16, linear_value_head_dim=16, num_experts=2, num_experts_per_tok=1,
        moe_intermediate_size=32, shared_expert_intermediate_size=32))
    assert not hf.decodes_alone(linear)


def test_revise_stops_revising_when_the_first_chunk_shows_the_model_cannot(tiny_model, tmp_path):
    run = Run(tiny_cfg(tmp_path, tiny_model, ["revise.min_keep=1.01"]), tmp_path / "out")
    seed_generate(run)
    run.execute(stages=["revise"])
    rows = records.read(run.path(common.REVISE))
    bs = run.cfg.revise.batch_size
    assert len(rows) == 6 > bs  # the six red-team records
    assert all(len(r["rounds"]) == 2 for r in rows[:bs]) and all(r["rounds"] == [] for r in rows[bs:])
    assert all(r["revision_source"] == "decline" and r["revision"] for r in rows[bs:])
    m = json.loads(run.path("manifest.json").read_text())["stages"]["revise"]
    assert m["revised"] == bs and m["first_chunk_keep_rate"] < 1.01


def test_public_suites_missing_from_this_machine_are_skipped_and_said(tiny_model, tmp_path, monkeypatch):
    """A user's clone has no shared data: evaluate still runs, and names what it could not load."""
    monkeypatch.setenv("CHARTER_SHARED_DATA", str(tmp_path / "nothing"))
    cfg = tiny_cfg(tmp_path, tiny_model, ["evaluate.models=[base]", "evaluate.suites=[xstest]",
                                          "evaluate.capability=[gsm8k]", "evaluate.helpfulness=false"])
    run = Run(cfg, tmp_path / "out")
    seed_calibration(run)
    run.execute(stages=["evaluate"])
    metrics = json.loads(run.path("eval/metrics.json").read_text())
    assert set(metrics["unavailable"]) == {"xstest", "gsm8k"} and metrics["models"]["base"]["n"]["harmful"] > 0
    assert metrics["suites"] == {} and metrics["capability"] == {}


def test_lm_head_projects_only_labelled_positions_with_the_same_numbers(tiny_model):
    """Every trainer's loss goes through TRL's fused LM head; on a CPU charter has it project only the
    positions with a label. Gradients and log-probs must be those of projecting every position."""
    import torch
    import trl.trainer.utils as tu

    from charter.train import labelled_positions_only, load_trainable

    model, tok = load_trainable(str(tiny_model), "cpu")
    tu.add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = tok(["how do I cook rice today", "hello"], return_tensors="pt", padding=True)
    labels = ids["input_ids"].clone()
    labels[:, :3] = -100  # a prompt
    labels[ids["attention_mask"] == 0] = -100  # padding
    seen, results = [], {}
    for on in (False, True):
        assert labelled_positions_only(on)
        seen.append(tu._use_triton(torch.device("cpu")))
        model.zero_grad()
        out = model(**ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        results[on] = (out.log_probs.detach(), out.entropy.detach(), model.lm_head.weight.grad.clone())
    assert seen == [False, True]  # the hook really switched paths
    for a, b in zip(results[False], results[True]):
        assert torch.allclose(a, b, atol=1e-6)
    assert (results[True][0][:, :2] == 0).all() and (results[True][0][:, 2:] != 0).any()
