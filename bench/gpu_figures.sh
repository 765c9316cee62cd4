#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one go: training throughput of the GPU presets, a short real
# training run of each twin on Tiny Shakespeare with `dlm train`, their `dlm eval`, samples and sampler
# speed. Everything it measures lands as JSON/text in OUT (run folders go to a scratch folder).
#
#   bash bench/gpu_figures.sh OUT [TRAIN_SECONDS]        # DLM_TINYSHAKESPEARE=... for an offline copy
#
# SMOKE=1 runs the same path with the tiny preset for seconds (to check the script on a CPU).
set -euo pipefail
out=${1:?usage: bash bench/gpu_figures.sh OUT [TRAIN_SECONDS]}
seconds=${2:-90}
mkdir -p "$out"
runs=$(mktemp -d)
dlm() { python3 -m dlm "$@"; }
preset=shakespeare-char big=owt-124m steps=16,64,256 throughput_steps=10 length=256
if [ "${SMOKE:-0}" = 1 ]; then preset=tiny big=tiny steps=8 throughput_steps=2 length=32; fi

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU";
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } | tee "$out/machine.txt"

python3 bench/train_throughput.py --presets "$preset" --dtypes bf16 fp32 --compile yes --steps "$throughput_steps" \
    --json "$out/throughput.json"
python3 bench/train_throughput.py --presets "$preset" --dtypes bf16 --compile no --steps "$throughput_steps" \
    --json "$out/throughput_eager.json"
python3 bench/train_throughput.py --presets "$big" --batch-size 32 --dtypes bf16 --compile yes \
    --steps "$throughput_steps" --json "$out/throughput_124m.json"

for objective in mdlm ar; do
    dlm train --preset "$preset" --objective "$objective" --out "$runs/$objective" --max-time "$seconds" \
        2>&1 | tail -n 4 | tee "$out/train_$objective.txt"
    cp "$runs/$objective/log.jsonl" "$out/log_$objective.jsonl"
    dlm eval --ckpt "$runs/$objective" --json "$out/eval_$objective.json" --quiet
    dlm sample --ckpt "$runs/$objective" --length "$length" --num-samples 2 --seed 0 > "$out/samples_$objective.txt"
done
python3 bench/sampling.py --diffusion "$runs/mdlm" --ar "$runs/ar" --samples 32 --batch-size 32 \
    --length "$length" --steps "$steps" --out "$out/sampling.json"
