#!/bin/sh
# The README's 10-minute block-diffusion runs, one per block size, each followed by `dlm eval --json`:
#
#     bench/block_diffusion_runs.sh 1 4 16 64          # → runs/bd3-b1, runs/bd3-b4, … and runs/bd3-bB.json
#
# The size is pinned to 4 × 192, the size today's MDLM and AR runs of the README were given by the
# budget probe, so every point of the frontier is the same network (set DLM_SIZE to change it).
# Extra key=value overrides go in DLM_OVERRIDES (e.g. train.dtype=fp32 for the AVX2 class).
set -e
cd "$(dirname "$0")/.."
SIZE=${DLM_SIZE:-"model.n_layer=4 model.d_model=192"}
PREFIX=${DLM_PREFIX:-runs/bd3-b}
for B in "$@"; do
  # shellcheck disable=SC2086
  dlm train --objective bd3 --block-size "$B" --out "$PREFIX$B" $SIZE $DLM_OVERRIDES > "$PREFIX$B.log" 2>&1
  dlm eval --ckpt "$PREFIX$B" --json "$PREFIX$B.json" > "$PREFIX$B.eval.log" 2>&1
  grep -h "NELBO" "$PREFIX$B.eval.log"
done
