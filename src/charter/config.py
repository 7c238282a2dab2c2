"""Typed run configuration: YAML file plus `key=value` overrides.

Every field carries a docstring, which pydantic keeps as the field's description
(`schema.field_docs` lists them).
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Literal, Optional

from pydantic import Field, field_validator

from .errors import CharterError
from .schema import Count, NonEmpty, Positive, Section, from_dict
from .yamlio import LineDict, load_yaml, loads_yaml


class PoolConfig(Section):
    source: str
    """`builtin:NAME` (redteam, helpful, lookalike), a local .jsonl file, or a `datasets` hub id."""
    split: str = "train"
    """Which split to read: `train` or `dev` for builtin pools, any split name for hub datasets."""
    limit: Optional[Positive] = None
    """Keep at most this many prompts (first N after a seeded shuffle); null keeps all."""
    field: str = "prompt"
    """Column that holds the prompt text (for local files and hub datasets)."""


class PoolsConfig(Section):
    redteam: PoolConfig = PoolConfig(source="builtin:redteam")
    """Harmful requests: responses to these get critiqued and revised."""
    helpful: PoolConfig = PoolConfig(source="builtin:helpful")
    """Ordinary requests: their responses are mixed into SFT so helpfulness is kept."""
    lookalike: PoolConfig = PoolConfig(source="builtin:lookalike")
    """Benign requests that look scary (homonyms, fiction, safety info); treated like helpful ones."""

    @field_validator("redteam", "helpful", "lookalike", mode="before")
    @classmethod
    def _keep_source(cls, value, info):
        # `pools.redteam.limit=3` limits the default pool rather than asking for a new source
        value = {} if value is None else value  # `redteam:` with nothing under it keeps the default pool
        return {"source": f"builtin:{info.field_name}", **value} if isinstance(value, dict) else value


class SamplingConfig(Section):
    max_new_tokens: Positive = 96
    """Longest response, in tokens."""
    temperature: float = 0.7
    """Sampling temperature; 0 means greedy decoding."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    batch_size: Positive = 16
    """Prompts per generate call: one forward pass serves the whole batch (see README, "Speed")."""


class ReviseConfig(Section):
    rounds: Count = 2
    """Critique-then-revise rounds per red-team response (CAI paper, section 3.1)."""
    critique_tokens: Positive = 64
    """Longest critique, in tokens."""
    revision_tokens: Positive = 96
    """Longest revision, in tokens."""
    temperature: float = 0.7
    """Sampling temperature for critiques and revisions."""
    batch_size: Positive = 16
    """Prompts per generate call."""
    few_shot: bool = True
    """Prefix each critique/revision with one worked example, as the CAI paper does."""
    check: bool = True
    """Ask the supervisor whether the final revision beats the initial response; if it does not,
    use the matching principle's `decline` text instead (small models rarely revise well)."""
    check_threshold: float = 0.75
    """Minimum P(revision better than the initial response) to keep the model's own revision. With the
    classifier supervisor, only a revision that declines where the initial answer complied clears 0.75."""
    min_keep: float = 0.1
    """Adaptive revise: when fewer than this share of the first chunk's revisions pass the check, the model
    has shown it cannot revise, and the remaining records skip critique and revision and take the decline
    text the check would have fallen back to (recorded in the manifest). 0 always revises everything."""


class TrainConfig(Section):
    """Settings SFT and DPO share (`train.trl_args` reads them)."""

    epochs: float = 1.0
    """Passes over the training data."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: use epochs)."""
    lr: float = 2e-5
    """Peak learning rate."""
    batch_size: Positive = 4
    """Examples per optimizer step."""
    max_length: Positive = 384
    """Truncate tokenized examples to this many tokens."""
    lora: bool = False
    """Train LoRA adapters (merged into the saved model) instead of all weights."""
    lora_r: Positive = 16
    """LoRA rank."""


class SFTConfig(TrainConfig):
    helpful_mix: float = 1.0
    """Helpful-prompt examples per revision example (keeps the model helpful)."""


class DPOConfig(TrainConfig):
    enabled: bool = True
    """Run the pairs, label and dpo stages (off: `rl` trains from the SFT model instead)."""
    lr: float = 5e-6
    """Peak learning rate."""
    beta: float = 0.1
    """DPO temperature beta."""
    labels: Literal["threshold", "soft"] = "threshold"
    """`threshold` keeps pairs whose label is at least `margin` away from 0.5 as hard preferences; `soft`
    keeps all and uses conservative DPO with the mean label noise."""
    margin: float = 0.1
    """Minimum |p - 0.5| for a pair to be used."""
    balance: bool = False
    """Keep as many pairs on harmful requests as on benign ones (the larger side is subsampled, seeded), so
    the preference data does not lean towards refusing."""


class RLConfig(TrainConfig):
    """Online RL from the supervisor's reward (the `rl` stage): GRPO (Shao et al. 2024, arXiv 2402.03300)."""

    enabled: bool = False
    """Run the `rl` stage. It trains the last model this run trained (DPO's, else SFT's)."""
    lr: float = 1e-5
    """Peak learning rate."""
    batch_size: Positive = 16
    """Completions per optimizer step: `batch_size / num_generations` prompts, each sampled that many times."""
    num_generations: Positive = 4
    """Samples per prompt. GRPO's baseline is their mean reward, so it needs no value model."""
    max_new_tokens: Positive = 64
    """Longest sampled response, in tokens."""
    temperature: float = 0.9
    """Sampling temperature; the samples of one prompt must differ for their rewards to."""
    beta: float = 0.04
    """KL penalty towards the starting model (0 turns it off, and its reference model with it)."""
    quality_weight: float = 0.25
    """Weight of the quality term, so that an empty or looping response never wins (`supervise.reward`)."""
    log_every: Positive = 5
    """Write reward, refusal rates per label and KL to `rl/progress.jsonl` every this many steps."""
    save_every: Positive = 20
    """Checkpoint every this many steps, so a killed stage resumes from the last checkpoint."""


class CastConfig(Section):
    """Conditional activation steering (the `cast` stage, `charter.steer`): a trained model refuses only
    where the supervisor flags the request. It edits activations at generation, not weights, so it is a
    comparison point for the training methods; an exported model does not carry it."""

    enabled: bool = False
    """Run the `cast` stage and evaluate its steered model as `cast`."""
    start: Literal["sft", "dpo", "rl"] = "sft"
    """The model to steer. SFT, not the run's last model: DPO's refusals are mostly redirects without a
    refusal phrase, and its direction, projected out, left benign requests declined (see the README's
    frontier section, measured on the supervisor's validation rows)."""
    depth: float = 0.667
    """Where the refusal direction is read and, from there on, projected out: a fraction of the layers."""
    add: float = 1.0
    """Multiple of the refusal direction added at that layer to a flagged request's states (CAST's behaviour
    vector), so that the model declines where the supervisor says it should; 0 leaves flagged requests to
    the model as it is."""
    max_new_tokens: Positive = 64
    """Length of the answers to the training prompts that tell refused from answered."""
    temperature: float = 0.9
    """Sampling temperature of those answers. Sampled, not greedy: a prompt the model refuses only sometimes
    then lands on either side, so each label has refused and answered prompts to take the difference of."""
    batch_size: Positive = 64
    """Prompts per generate call."""

    @field_validator("start", mode="before")
    @classmethod
    def _start(cls, v):  # null meant "the last model" in manifests written before the default was sft
        return "sft" if v is None else v

    @field_validator("depth")
    @classmethod
    def _depth(cls, v):
        if not 0 < v <= 1:
            raise ValueError(f"must be in (0, 1], got {v}")
        return v


class PairsConfig(Section):
    per_prompt: Positive = 1
    """Response pairs sampled from the SFT model per prompt."""
    max_pairs: Positive = 256
    """Stop after this many pairs."""
    temperature: float = 0.9
    """Sampling temperature; high so that the two responses differ."""
    max_new_tokens: Positive = 96
    """Longest response, in tokens."""
    batch_size: Positive = 16
    """Prompts per generate call."""
    samples: Annotated[int, Field(ge=2)] = 2
    """Responses sampled from the SFT model per prompt. Above 2, the pair is the best and the worst of them
    under the supervisor's two-sided reward (`supervise.reward`): on-policy pairs, both sides drawn from the
    model being trained, so a prompt it sometimes refuses and sometimes answers teaches which is right."""
    base_side: bool = False
    """Take side b from the base model's own response to the prompt (from the generate stage) instead of
    a second SFT sample. The supervisor then compares the SFT model with where it started: a harmless
    request the SFT model learned to refuse yields a pair against that refusal, so DPO can undo the
    over-refusal SFT taught, and a harmful request yields a pair against the base's compliance."""


class SupervisorConfig(Section):
    kind: Literal["classifier", "llm", "ensemble"] = "classifier"
    """`classifier`: trained by charter from the constitution and prompt pools (works on a CPU);
    `llm`: CAI multiple-choice judge on `model`; `ensemble`: average of both."""
    model: str = "default"
    """Judge model for `llm`/`ensemble` (a backend spec)."""
    cot: bool = False
    """LLM judge: reason step by step first, then clamp the label to 40-60% (CAI paper, 4.1)."""
    threshold: float = 0.9
    """Calibration gate: minimum accuracy on each direction of the dev contrast pairs before labels are used."""
    max_gap: float = 0.05
    """Calibration gate: largest allowed difference between the two directions' accuracies, so a supervisor
    cannot pass by leaning one way (refusing nearly everything passes the harmful direction alone)."""
    suites: list[str] = ["dev", "xstest", "harmbench", "jailbreak", "jailbreak-benign"]
    """Calibration: labelled request suites the supervisor is scored on (`charter.supervise.suites`): dev,
    xstest, harmbench, jailbreak, jailbreak-benign or a prompt JSONL file. Public suites missing from the
    shared data folder are skipped with a note, unless the gate requires them."""
    suite_limit: Optional[Positive] = None
    """Calibration: score a seeded sample of at most this many prompts per suite (null: all of each)."""
    gate: dict[str, float] = {}
    """Calibration gate: further required figures, `SUITE.MEASURE: bound`, where MEASURE is `f1`, `auc` or
    `harmful_flagged` (each at least the bound) or `benign_flagged` (at most the bound), e.g.
    `{xstest.f1: 0.82, xstest.benign_flagged: 0.07, harmbench.harmful_flagged: 0.95}`."""
    hh_limit: Count = 200
    """Calibration: HH-RLHF harmless test pairs to measure agreement with human preferences on (0 skips)."""
    probe_model: str = "default"
    """Classifier: the frozen chat model whose hidden states its request-harm probe reads (a model spec)."""
    probe_depths: list[float] = [0.5, 0.667, 0.833]
    """Classifier: which layers the probe reads, as fractions of the model's depth (0.5, 0.667, 0.833: layers
    15, 20 and 25 of 30)."""
    probe_weight_decay: float = 0.1
    """Classifier: L2 penalty of the probe's logistic regression (chosen by cross-validation on training data,
    `benchmarks/supervisor_cv.py`)."""
    probe_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Classifier: the precision the probe model runs in. `auto`: bfloat16 where the hardware computes it
    natively (recent x86 CPUs, most GPUs), else float32 (the README measures both)."""
    train_public: list[str] = ["advbench", "strongreject"]
    """Classifier: public harmful request sets it also trains on (suite names, loaded from the shared data folder
    or the hub; skipped with a note when unavailable). Never list a set it is evaluated on."""
    target_fpr: Optional[float] = None
    """Classifier: how its decision threshold is chosen on the validation requests (charter's own held-out
    lookalikes, ordinary and harmful requests and HarmBench val; never an evaluation set). Null: where the
    share of benign requests flagged equals the share of harmful ones missed, as the calibration gate wants
    both directions right equally often. A number: the lowest threshold flagging at most that share of the
    benign requests (a guard that must rarely block harmless users)."""
    router: str = "embedded:minilm"
    """Classifier: frozen sentence encoder that picks the principle for a request (`embedded:minilm` =
    all-MiniLM-L6-v2 from its PyPI package, or a hub id/folder)."""


class EvalConfig(Section):
    models: list[str] = []
    """Which models to evaluate: `base`, `sft`, `dpo`, `rl`, `cast`, or any backend spec (empty: the base model and
    every model the run trains)."""
    limit: Optional[Positive] = None
    """Evaluate at most this many prompts per pool of the dev split (never trained on)."""
    max_new_tokens: Positive = 96
    """Longest response, in tokens."""
    batch_size: Positive = 16
    """Prompts per generate call."""
    suites: list[str] = []
    """Extra safety suites for every model: xstest, strongreject, harmbench, advbench or a prompt JSONL
    (AdvBench is skipped when a training pool draws on it)."""
    suite_limit: Optional[Positive] = None
    """At most this many prompts per extra suite (a seeded sample)."""
    capability: list[str] = []
    """Capability suites for every model: gsm8k, humaneval."""
    capability_limit: Optional[Positive] = 50
    """At most this many items per capability suite."""
    helpfulness: bool = True
    """Win rate of each aligned model over the base on the benign dev prompts, judged pairwise by the
    supervisor in both orders, with a length-controlled variant."""


class ExecutorConfig(Section):
    kind: Literal["local", "ray"] = "local"
    """`local` computes every record in this process; `ray` shards generation, critique/revision,
    labelling and evaluation over Ray workers (training stays in the driver, see `accelerate`)."""
    address: str = "local"
    """Ray cluster: `local` starts one on this machine, `auto` joins the cluster this machine is part
    of, `HOST:PORT` joins the head node there, `ray://HOST:10001` connects as a Ray client."""
    workers: Positive = 2
    """Ray workers (actors), each holding one copy of the model it serves."""
    cpus_per_worker: float = 1
    """CPUs Ray reserves per worker; torch in the worker uses that many threads."""
    gpus_per_worker: float = 0
    """GPUs Ray reserves per worker (e.g. 1 for a vLLM or transformers backend on CUDA)."""


class TrackingConfig(Section):
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = []
    """Experiment trackers for training curves (passed to TRL) and per-stage metrics: `tensorboard`
    (event files in the run's `tracking/tensorboard`), `mlflow` (`MLFLOW_TRACKING_URI`, else a SQLite
    store, the run's `tracking/mlflow.db`), `wandb` (training curves only). Empty: no tracking, no network."""


class RunConfig(Section):
    model: NonEmpty = "default"
    """Base chat model: `default` (embedded SmolLM2-135M-Instruct), a hub id, a folder or a .gguf file."""
    constitution: NonEmpty = "default"
    """Constitution: `default`, `small`, or a path to a YAML file."""
    seed: int = 0
    """Seed for sampling principles, shuffles and generation."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` (or `cuda:N`) or `mps`."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """The precision the model generates in and trains with (transformers engine). `auto`: bfloat16 where the
    hardware computes it natively (recent x86 CPUs, most GPUs), else float32. Training keeps float32 weights
    and computes in bfloat16 (autocast). Generated text differs from float32's where two tokens nearly tie,
    so the generation cache keys it."""
    system_prompt: Optional[str] = None
    """Optional system message for every generation."""
    trust_remote_code: bool = False
    """Let transformers run model code shipped with a hub model. Off unless you set it; it is recorded
    in the manifest with the rest of the config. Weights load from safetensors only, either way."""
    pools: PoolsConfig = PoolsConfig()
    """Prompt pools."""
    generate: SamplingConfig = SamplingConfig()
    """Initial responses."""
    revise: ReviseConfig = ReviseConfig()
    """Critique and revision."""
    sft: SFTConfig = SFTConfig()
    """Supervised fine-tuning on revisions."""
    pairs: PairsConfig = PairsConfig()
    """Response pairs sampled from the SFT model."""
    supervisor: SupervisorConfig = SupervisorConfig()
    """Who labels the pairs, and the calibration gate."""
    dpo: DPOConfig = DPOConfig()
    """Preference optimisation on the labelled pairs."""
    rl: RLConfig = RLConfig()
    """Online RL against the supervisor's reward, after (or, with `dpo.enabled: false`, instead of) DPO."""
    cast: CastConfig = CastConfig()
    """Conditional activation steering of the last model, evaluated beside the trained ones."""
    evaluate: EvalConfig = EvalConfig()
    """Evaluation of base, SFT and DPO models."""
    executor: ExecutorConfig = ExecutorConfig()
    """Where records are computed: this process, or Ray workers. Not part of the config hash: the
    records are the same either way, so a run may switch executor and resume."""
    tracking: TrackingConfig = TrackingConfig()
    """Where training curves and stage metrics are also sent. Not part of the config hash either."""
    cache: bool = True
    """Reuse generations across runs (`$CHARTER_CACHE/generations`), keyed by the model's weights and engine,
    the device and library versions, the rendered prompts and the sampling parameters: a second run of one
    base model does not generate its answers again. Not part of the config hash: a cached answer is the one
    the model gave to the same request on the same setup."""

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, got {v!r}")
        return v

    def shaping(self) -> dict:
        """`shaping` of this config."""
        return shaping(self.model_dump())

    def hash(self) -> str:
        """Hash of `shaping()`."""
        return hashlib.sha256(json.dumps(self.shaping(), sort_keys=True).encode()).hexdigest()[:16]


def shaping(dump: dict) -> dict:
    """The settings of a config dump (`RunConfig.model_dump()`, or a manifest's `config`) that shape the
    records, as they differ from the defaults: a charter release that adds a field (with a default) does not
    change them, so existing run directories stay valid. Where records are computed and tracked does not."""
    d = _changed(dump, RunConfig().model_dump())
    for key in ("executor", "tracking", "cache"):
        d.pop(key, None)
    return d


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
