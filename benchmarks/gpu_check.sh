#!/usr/bin/env bash
# End-to-end check of the GPU path on ONE GPU, in under 15 minutes: bf16, vLLM colocate, LoRA, and CE-GPPO + ERC
# acting (non-zero clip and entropy-ratio metrics; the script exits non-zero otherwise), then the overhead against
# TRL's dapo. Run from anywhere, on a machine with one CUDA GPU:
#
#   pip install -e '.[vllm,test]'
#   bash benchmarks/gpu_check.sh [--model HUB_ID_OR_DIR|random] [--out DIR] [--liger]
#
# 1. benchmarks/gpu_check.py --arm ours: CEGPPOTrainer (ce_gppo 0.5/1.0, clip_ratio_c 10, ERC 0.95/1.05), LoRA r=16,
#    bf16, vLLM colocate, 16 optimizer steps with 4 updates per rollout batch; checks the metrics (exit 1 on failure).
# 2. benchmarks/gpu_check.py --arm trl: trl.GRPOTrainer(loss_type="dapo"), same everything; then the step-time table.
# 3. benchmarks/gpu_check.py --arm ours --qlora: the same with a bitsandbytes 4-bit base (QLoRA) under the adapters,
#    vLLM colocate with the adapter-only sync and sleep mode (as the QLoRA recipe); checks the 4-bit base and the
#    engine's log-prob gap (exit 1 on failure).
# 4. benchmarks/overhead.py on the GPU (bf16, random-weight Qwen2.5-0.5B, transformers generate, alternated pairs).
# --model defaults to Qwen/Qwen2.5-0.5B-Instruct; without internet it falls back to random weights built from the
# Qwen2.5-0.5B config. Results: DIR/ours.json, DIR/trl.json, DIR/compare.md, DIR/ours-qlora.json, DIR/overhead.json,
# DIR/overhead.md. OVERHEAD_PAIRS (default 2) sets the pairs of step 4. Step 3 needs bitsandbytes ('.[quantization]').
set -euo pipefail

model="Qwen/Qwen2.5-0.5B-Instruct"
out="outputs/gpu_check"
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) model="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --liger) extra+=(--liger); shift ;;
        -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "gpu_check.sh: torch sees no CUDA GPU")'
python -c 'import vllm' 2>/dev/null || { echo "gpu_check.sh: vLLM is missing: pip install -e '.[vllm]'" >&2; exit 1; }
python -c 'import bitsandbytes' 2>/dev/null || {
    echo "gpu_check.sh: bitsandbytes is missing: pip install -e '.[quantization]'" >&2
    exit 1
}
if [[ ${#extra[@]} -gt 0 ]]; then
    python -c 'import liger_kernel' 2>/dev/null || { echo "gpu_check.sh: pip install liger-kernel" >&2; exit 1; }
fi
mkdir -p "$out"
start=$(date +%s)

echo "== 1/4 CE-GPPO + ERC, LoRA, bf16, vLLM colocate"
python benchmarks/gpu_check.py --arm ours --model "$model" --out "$out" ${extra[@]+"${extra[@]}"}
echo "== 2/4 TRL dapo, same settings"
python benchmarks/gpu_check.py --arm trl --model "$model" --out "$out" ${extra[@]+"${extra[@]}"}
python benchmarks/gpu_check.py --compare "$out" | tee "$out/compare.md"
echo "== 3/4 CE-GPPO + ERC, QLoRA (4-bit base), bf16, vLLM colocate with the adapter-only sync"
python benchmarks/gpu_check.py --arm ours --qlora --model "$model" --out "$out" ${extra[@]+"${extra[@]}"}
echo "== 4/4 overhead against TRL dapo (benchmarks/overhead.py)"
python benchmarks/overhead.py --device cuda --bf16 --model-config qwen2.5-0.5b --pairs "${OVERHEAD_PAIRS:-2}" \
    --steps 8 --completion-length 128 --json "$out/overhead.json" | tee "$out/overhead.md"

echo "gpu_check.sh: every check passed in $(($(date +%s) - start)) s; figures in $out"
