import hashlib
from pathlib import Path

import pytest

from charter import config as C
from charter.config import load_config
from charter.errors import CharterError
from charter.schema import field_docs

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_every_shipped_config_parses_and_opens_with_its_command():
    assert CONFIGS, "no shipped configs"
    for path in CONFIGS:
        first = path.read_text().splitlines()[:3]
        assert any("charter " in line and line.startswith("#") for line in first), f"{path} lacks its command"
        if path.name.startswith("accelerate"):
            continue
        if path.name == "family.yaml":
            from charter.family import load_family

            fam = load_family(path)
            for m in fam.members:  # every tier's resolved config must parse too
                load_config(fam.run, [f"model={m.model}", *fam.overrides, *m.overrides])
            continue
        cfg = load_config(path)
        assert C.RunConfig.model_validate(cfg.model_dump()).hash() == cfg.hash()  # the manifest's dump reloads


def test_every_config_field_has_a_docstring():
    from charter.family import FamilyConfig, Member

    for cls in (FamilyConfig, Member, C.RunConfig, C.PoolsConfig, C.PoolConfig, C.SamplingConfig, C.ReviseConfig, C.SFTConfig, C.DPOConfig,
                C.PairsConfig, C.SupervisorConfig, C.EvalConfig):
        docs = field_docs(cls)
        missing = [name for name in cls.model_fields if not docs.get(name)]
        assert not missing, f"{cls.__name__}: undocumented {missing}"


def test_unknown_key_names_file_and_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: default\nsft:\n  lr: 1e-5\n  epochz: 2\n")
    with pytest.raises(CharterError, match=r"c.yaml:4: unknown key 'sft.epochz' \(did you mean 'epochs'\?\)"):
        load_config(p)


def test_wrong_type_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: abc\n")
    with pytest.raises(CharterError, match=r"c.yaml:1: seed must be an integer"):
        load_config(p)


@pytest.mark.parametrize("text, pattern", [
    ("generate:\n  batch_size: 0\n", r"c.yaml:2: generate.batch_size must be greater than 0, got 0"),
    ("pools:\n  redteam: {limit: -3}\n", r"c.yaml:2: pools.redteam.limit must be greater than 0, got -3"),
    ("revise:\n  rounds: -1\n", r"c.yaml:2: revise.rounds must be at least 0, got -1"),
    ("pairs: {samples: 1}\n", r"c.yaml:1: pairs.samples must be at least 2, got 1"),
    ("seed: 1\ndevice: gpu\n", r"c.yaml:2: 'device' must be auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ('constitution: ""\n', r"c.yaml:1: 'constitution' must not be empty"),
    ("evaluate:\n  suites: [{a: 1}]\n", r"c.yaml:2: evaluate.suites\[0\] must be a string, got a mapping"),
])
def test_sizes_and_device_are_checked_when_the_config_loads(tmp_path, text, pattern):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(CharterError, match=pattern):
        load_config(p)


def test_an_empty_pool_section_keeps_the_default_pool(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pools:\n  redteam:\n")
    assert load_config(p).pools.redteam.source == "builtin:redteam"


def test_malformed_yaml_names_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: default\nsft: [1, 2\n")
    with pytest.raises(CharterError, match=r"c.yaml:\d+: invalid YAML"):
        load_config(p)


def test_overrides_apply_and_are_checked(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: default\n")
    cfg = load_config(p, ["sft.max_steps=7", "pools.redteam.limit=3", "revise.rounds=1"])
    assert cfg.sft.max_steps == 7 and cfg.pools.redteam.limit == 3 and cfg.revise.rounds == 1
    with pytest.raises(CharterError, match="override 'sft.nope=1'"):
        load_config(p, ["sft.nope=1"])
    assert load_config(p, ["seed=1"]).hash() != load_config(p).hash()
    # Settings left at their defaults, and the executor, do not enter the hash: a new field with a default
    # or a switch to Ray does not orphan a run directory.
    assert load_config(p, ["pairs.base_side=false", "executor.kind=ray"]).hash() == load_config(p).hash()
    assert load_config(p, ["pairs.base_side=true"]).hash() != load_config(p).hash()
    # Only changed settings enter the hash, so hashes of existing run directories stay valid.
    assert load_config(p).hash() == hashlib.sha256(b"{}").hexdigest()[:16]
    assert load_config(p, ["sft.lr=1e-4"]).hash() == hashlib.sha256(b'{"sft": {"lr": 0.0001}}').hexdigest()[:16]


def test_accelerate_configs_parse_and_open_with_their_command():
    import yaml

    paths = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"1gpu", "8gpu_zero3", "multinode", "cpu"}
    for p in paths:
        head = [l for l in p.read_text().splitlines() if l.startswith("#")]
        assert any("accelerate launch --config_file configs/accelerate/" in l for l in head), p
        d = yaml.safe_load(p.read_text())
        assert d["distributed_type"] in ("NO", "DEEPSPEED", "MULTI_GPU") and d["num_processes"] >= 1
        if d["distributed_type"] == "DEEPSPEED":
            assert d["deepspeed_config"]["zero_stage"] == 3


def test_stages_option_keeps_overrides(monkeypatch):
    import charter.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_run", lambda a: seen.update(stages=a.stages, overrides=a.overrides))
    assert cli.main(["run", "c.yaml", "--out", "d", "--stages", "sft", "dpo", "seed=3", "sft.lr=1e-4"]) == 0
    assert seen == {"stages": ["sft", "dpo"], "overrides": ["seed=3", "sft.lr=1e-4"]}


def test_yaml_merge_keys_may_be_overridden_but_own_keys_not_repeated():
    from charter.yamlio import loads_yaml

    text = "shared: &s {batch_size: 8, max_new_tokens: 32}\ngenerate: {<<: *s, batch_size: 16}\n"
    assert loads_yaml(text, "c.yaml")["generate"] == {"batch_size": 16, "max_new_tokens": 32}
    with pytest.raises(CharterError, match=r"c.yaml:2: duplicate key 'batch_size'"):
        loads_yaml("generate:\n  {<<: {max_new_tokens: 3}, batch_size: 8, batch_size: 16}\n", "c.yaml")
