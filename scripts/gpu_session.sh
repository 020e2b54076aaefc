#!/usr/bin/env bash
# One short GPU session, run from the repository root on a machine with a CUDA GPU:
#   1. train the embedded tiny generator from clips rendered in memory (world:EPISODES), ~5 min on an H100/H200;
#   2. time the full-size Wan 2.1 1.3B I2V architecture (random weights) through the diffusers adapter vs a
#      bare pipeline call, plus one LoRA forward/backward of its transformer and one real GRPO step
#      (GRPOTrainer + DiffusersPolicy: 2 rollouts at 480x832x33, update on a quarter of the steps).
# Outputs go to $OUT (default ./gpu-out). The GPU machine may lack the text encoder's weights and some
# packages: wheels in .whl/ are installed to /tmp/site, and the MiniLM embeddings of every tabletop
# wording come precomputed in .device/minilm_table.safetensors (spiral.models.text.write_text_table).
#
#   EPISODES=15000 MINUTES=5 BATCH=512 LR=8e-4 bash scripts/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
EPISODES=${EPISODES:-15000} MINUTES=${MINUTES:-5} BATCH=${BATCH:-512} LR=${LR:-8e-4} DEVICE=${DEVICE:-cuda}
RUN=${RUN:-checkpoints/tiny-gpu} WAN=${WAN:-1} WAN_STEPS=${WAN_STEPS:-20} WAN_TIMEOUT=${WAN_TIMEOUT:-300}
. "$(dirname "$0")/gpu_env.sh"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
TABLE=()
[ -f .device/minilm_table.safetensors ] && TABLE=(--text-table .device/minilm_table.safetensors)

t0=$(date +%s)
$PY -m spiral.cli train generator --data "world:$EPISODES:1" --out "$RUN" --steps 1000000 --batch "$BATCH" \
  --lr "$LR" --minutes "$MINUTES" --device "$DEVICE" --threads 8 --ckpt-every 2000 --sample-every 1000 \
  "${TABLE[@]}" 2>&1 | tee "$OUT/train.log" | grep -v "^train generator" | tail -40
echo "train command: $(( $(date +%s) - t0 )) s"
for f in tiny.safetensors tiny.md log.jsonl train_config.json; do cp "$RUN/$f" "$OUT/" 2>/dev/null; done
last=$(ls "$RUN"/samples/*.png 2>/dev/null | tail -1); [ -n "$last" ] && cp "$last" "$OUT/last_samples.png"

if [ "$WAN" = 1 ]; then
  t0=$(date +%s)
  timeout "$WAN_TIMEOUT" $PY benchmarks/diffusers_overhead.py --full-wan21 --lora-step --grpo-step --steps "$WAN_STEPS" \
    --repeats 2 --out "$OUT/diffusers_overhead_full.json" 2>&1 | tee "$OUT/wan.log" | tail -30
  echo "wan command: $(( $(date +%s) - t0 )) s"
fi
