"""Typed run configuration: YAML file plus `key=value` overrides.

Every field carries a docstring; `charter config --help` style listings and the
tests read them with `schema.field_docs`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal, Optional

from .errors import CharterError
from .schema import from_dict, to_dict
from .yamlio import LineDict, load_yaml, loads_yaml


@dataclass
class PoolConfig:
    source: str
    """`builtin:NAME` (redteam, helpful, lookalike), a local .jsonl file, or a `datasets` hub id."""
    split: str = "train"
    """Which split to read: `train` or `dev` for builtin pools, any split name for hub datasets."""
    limit: Optional[int] = None
    """Keep at most this many prompts (first N after a seeded shuffle); null keeps all."""
    field: str = "prompt"
    """Column that holds the prompt text (for local files and hub datasets)."""


@dataclass
class PoolsConfig:
    redteam: PoolConfig = field(default_factory=lambda: PoolConfig("builtin:redteam"))
    """Harmful requests: responses to these get critiqued and revised."""
    helpful: PoolConfig = field(default_factory=lambda: PoolConfig("builtin:helpful"))
    """Ordinary requests: their responses are mixed into SFT so helpfulness is kept."""
    lookalike: PoolConfig = field(default_factory=lambda: PoolConfig("builtin:lookalike"))
    """Benign requests that look scary (homonyms, fiction, safety info); treated like helpful ones."""


@dataclass
class SamplingConfig:
    max_new_tokens: int = 96
    """Longest response, in tokens."""
    temperature: float = 0.7
    """Sampling temperature; 0 means greedy decoding."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    batch_size: int = 16
    """Prompts per generate call (batched generation is ~7x faster on CPU)."""


@dataclass
class ReviseConfig:
    rounds: int = 2
    """Critique-then-revise rounds per red-team response (CAI paper, section 3.1)."""
    critique_tokens: int = 64
    """Longest critique, in tokens."""
    revision_tokens: int = 96
    """Longest revision, in tokens."""
    temperature: float = 0.7
    """Sampling temperature for critiques and revisions."""
    batch_size: int = 16
    """Prompts per generate call."""
    few_shot: bool = True
    """Prefix each critique/revision with one worked example, as the CAI paper does."""
    check: bool = True
    """Ask the supervisor whether the final revision beats the initial response; if it does not,
    use the matching principle's `decline` text instead (small models rarely revise well)."""
    check_threshold: float = 0.75
    """Minimum P(revision better than the initial response) to keep the model's own revision. With the
    classifier supervisor, only a revision that declines where the initial answer complied clears 0.75."""


@dataclass
class TrainConfig:
    epochs: float = 1.0
    """Passes over the training data."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: use epochs)."""
    lr: float = 2e-5
    """Peak learning rate."""
    batch_size: int = 4
    """Examples per optimizer step."""
    max_length: int = 384
    """Truncate tokenized examples to this many tokens."""
    lora: bool = False
    """Train LoRA adapters (merged into the saved model) instead of all weights."""
    lora_r: int = 16
    """LoRA rank."""
    beta: float = 0.1
    """DPO temperature beta (DPO only)."""
    labels: Literal["threshold", "soft"] = "threshold"
    """DPO only: `threshold` keeps pairs whose label is at least `margin` away from 0.5 as hard
    preferences; `soft` keeps all and uses conservative DPO with the mean label noise."""
    margin: float = 0.1
    """DPO only: minimum |p - 0.5| for a pair to be used."""
    balance: bool = False
    """DPO only: keep as many pairs on harmful requests as on benign ones (the larger side is subsampled,
    seeded), so the preference data does not lean towards refusing."""
    helpful_mix: float = 1.0
    """SFT only: helpful-prompt examples per revision example (keeps the model helpful)."""


@dataclass
class PairsConfig:
    per_prompt: int = 1
    """Response pairs sampled from the SFT model per prompt."""
    max_pairs: int = 256
    """Stop after this many pairs."""
    temperature: float = 0.9
    """Sampling temperature; high so that the two responses differ."""
    max_new_tokens: int = 96
    """Longest response, in tokens."""
    batch_size: int = 16
    """Prompts per generate call."""
    base_side: bool = False
    """Take side b from the base model's own response to the prompt (from the generate stage) instead of
    a second SFT sample. The supervisor then compares the SFT model with where it started: a harmless
    request the SFT model learned to refuse yields a pair against that refusal, so DPO can undo the
    over-refusal SFT taught, and a harmful request yields a pair against the base's compliance."""


@dataclass
class SupervisorConfig:
    kind: Literal["classifier", "llm", "ensemble"] = "classifier"
    """`classifier`: trained by charter from the constitution and prompt pools (works on a CPU);
    `llm`: CAI multiple-choice judge on `model`; `ensemble`: average of both."""
    model: str = "default"
    """Judge model for `llm`/`ensemble` (a backend spec)."""
    cot: bool = False
    """LLM judge: reason step by step first, then clamp the label to 40-60% (CAI paper, 4.1)."""
    threshold: float = 0.9
    """Calibration gate: minimum accuracy on the dev contrast pairs before labels are used."""
    hh_limit: int = 200
    """Calibration: HH-RLHF harmless test pairs to measure agreement with human preferences on (0 skips)."""
    probe_model: str = "default"
    """Classifier: the frozen chat model whose hidden states its request-harm probe reads (a model spec)."""
    probe_depth: float = 0.667
    """Classifier: which layer the probe reads, as a fraction of the model's depth (0.667: layer 20 of 30)."""
    probe_weight_decay: float = 0.1
    """Classifier: L2 penalty of the probe's logistic regression (chosen by 5-fold cross-validation)."""
    router: str = "embedded:minilm"
    """Classifier: frozen sentence encoder that picks the principle for a request (`embedded:minilm` =
    all-MiniLM-L6-v2 from its PyPI package, or a hub id/folder)."""


@dataclass
class EvalConfig:
    models: list[str] = field(default_factory=lambda: ["base", "sft", "dpo"])
    """Which models to evaluate: `base`, `sft`, `dpo`, or any backend spec."""
    split: str = "dev"
    """Split of the builtin pools to evaluate on (never trained on)."""
    limit: Optional[int] = None
    """Evaluate at most this many prompts per pool."""
    max_new_tokens: int = 96
    """Longest response, in tokens."""
    batch_size: int = 16
    """Prompts per generate call."""
    suites: list[str] = field(default_factory=list)
    """Extra safety suites for every model: xstest, strongreject, harmbench, advbench or a prompt JSONL
    (AdvBench is skipped when a training pool draws on it)."""
    suite_limit: Optional[int] = None
    """At most this many prompts per extra suite (a seeded sample)."""
    capability: list[str] = field(default_factory=list)
    """Capability suites for every model: gsm8k, humaneval."""
    capability_limit: Optional[int] = 50
    """At most this many items per capability suite."""
    helpfulness: bool = True
    """Win rate of each aligned model over the base on the benign dev prompts, judged pairwise by the
    supervisor in both orders, with a length-controlled variant."""


@dataclass
class ExecutorConfig:
    kind: Literal["local", "ray"] = "local"
    """`local` computes every record in this process; `ray` shards generation, critique/revision,
    labelling and evaluation over Ray workers (training stays in the driver, see `accelerate`)."""
    address: str = "local"
    """Ray cluster: `local` starts one on this machine, `auto` joins the cluster this machine is part
    of, `HOST:PORT` joins the head node there, `ray://HOST:10001` connects as a Ray client."""
    workers: int = 2
    """Ray workers (actors), each holding one copy of the model it serves."""
    cpus_per_worker: float = 1
    """CPUs Ray reserves per worker; torch in the worker uses that many threads."""
    gpus_per_worker: float = 0
    """GPUs Ray reserves per worker (e.g. 1 for a vLLM or transformers backend on CUDA)."""


@dataclass
class RunConfig:
    model: str = "default"
    """Base chat model: `default` (embedded SmolLM2-135M-Instruct), a hub id, a folder or a .gguf file."""
    constitution: str = "default"
    """Constitution: `default`, `small`, or a path to a YAML file."""
    seed: int = 0
    """Seed for sampling principles, shuffles and generation."""
    device: str = "auto"
    """`auto`, `cpu` or `cuda`."""
    system_prompt: Optional[str] = None
    """Optional system message for every generation."""
    trust_remote_code: bool = False
    """Let transformers run model code shipped with a hub model. Off unless you set it; it is recorded
    in the manifest with the rest of the config. Weights load from safetensors only, either way."""
    pools: PoolsConfig = field(default_factory=PoolsConfig)
    """Prompt pools."""
    generate: SamplingConfig = field(default_factory=SamplingConfig)
    """Initial responses."""
    revise: ReviseConfig = field(default_factory=ReviseConfig)
    """Critique and revision."""
    sft: TrainConfig = field(default_factory=lambda: TrainConfig(lr=2e-5))
    """Supervised fine-tuning on revisions."""
    pairs: PairsConfig = field(default_factory=PairsConfig)
    """Response pairs sampled from the SFT model."""
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)
    """Who labels the pairs, and the calibration gate."""
    dpo: TrainConfig = field(default_factory=lambda: TrainConfig(lr=5e-6))
    """Preference optimisation on the labelled pairs."""
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation of base, SFT and DPO models."""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    """Where records are computed: this process, or Ray workers. Not part of the config hash: the
    records are the same either way, so a run may switch executor and resume."""

    def hash(self) -> str:
        """Hash of the settings that shape the records: values left at their defaults are left out, so a
        charter release that adds a field (with a default) does not orphan existing run directories."""
        d = _changed(to_dict(self), to_dict(RunConfig()))
        d.pop("executor", None)
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _changed(d: dict, default: dict) -> dict:
    out = {}
    for k, v in d.items():
        base = default.get(k)
        if isinstance(v, dict) and isinstance(base, dict):
            sub = _changed(v, base)
            if sub:
                out[k] = sub
        elif k not in default or v != base:
            out[k] = v
    return out


def _set_dotted(data: dict, dotted: str, value, origin: str):
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = LineDict()
            nxt.file = origin
            cur[k] = nxt
        elif not isinstance(nxt, dict):
            raise CharterError(f"{origin}: cannot set {dotted!r}: {k!r} is not a section")
        cur = nxt
    cur[keys[-1]] = value
    if isinstance(cur, LineDict):
        cur.lines[keys[-1]] = origin


def load_config(path, overrides=()) -> RunConfig:
    """Load a run config from YAML and apply `a.b=value` overrides."""
    data = load_yaml(path) if path else LineDict()
    if data is None:
        data = LineDict()
    if not isinstance(data, dict):
        raise CharterError(f"{path}:1: a config must be a mapping of keys to values")
    for item in overrides:
        if "=" not in item:
            raise CharterError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        value = loads_yaml(raw, f"override {key}") if raw.strip() else ""
        _set_dotted(data, key.strip(), value, f"override {item!r}")
    return from_dict(RunConfig, data)


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
