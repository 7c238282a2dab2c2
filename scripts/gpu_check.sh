#!/usr/bin/env bash
# GPU check of the vLLM path. Run with: bash scripts/gpu_check.sh   (on a CUDA machine with charter and vllm
# installed; no network needed: the embedded model is served from its safetensors copy in charter's cache).
# 1. the gpu-marked tests: vLLM against transformers on the same weights (greedy text, option log-probs);
# 2. the smoke pipeline with vLLM generating and judging and transformers training on the GPU;
# 3. a timing line per stage from the manifest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/gpu-check}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, vllm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'vllm', vllm.__version__)"
MODEL=${MODEL:-$($PY -c "from charter.models import resolve_model; print(resolve_model('default'))")}
echo "model: $MODEL"
CHARTER_GPU_MODEL="$MODEL" $PY -m pytest -q -m gpu tests
rm -rf "$OUT"
$PY -m charter.cli run configs/smoke.yaml --out "$OUT" --force "model=vllm:$MODEL" device=cuda
$PY - "$OUT" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/manifest.json"))
for stage, info in m["stages"].items():
    print(f"{stage:10s} {info['status']:8s} {info.get('seconds', 0):8.1f} s")
PY
