#!/usr/bin/env bash
# Self-evolution of the tiny generator on one GPU within a few minutes (what the shipped tiny-evolved
# weights came from). Same setup as scripts/gpu_session.sh: wheels in .whl/, MiniLM table in .device/.
#   MINUTES=4.3 bash scripts/gpu_grpo.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
MINUTES=${MINUTES:-4.3} DEVICE=${DEVICE:-cuda} RUN=${RUN:-runs/grpo-gpu} PROMPTS=${PROMPTS:-16}
. "$(dirname "$0")/gpu_env.sh"
SETS=(--set "prompts_per_step=$PROMPTS")
[ -f .device/minilm_table.safetensors ] && SETS+=(--set text_table=.device/minilm_table.safetensors)
t0=$(date +%s)
$PY -m spiral.cli train grpo --config configs/grpo-tiny.yaml --out "$RUN" --device "$DEVICE" --minutes "$MINUTES" \
  --threads 8 --export "$OUT/tiny_evolved.safetensors" "${SETS[@]}" 2>&1 | tee "$OUT/grpo.log" | tail -60
echo "grpo command: $(( $(date +%s) - t0 )) s"
cp "$RUN/log.jsonl" "$OUT/grpo_log.jsonl"; cp "$RUN/config.json" "$OUT/grpo_config.json"
last=$(ls "$RUN"/samples/*.png 2>/dev/null | tail -1); [ -n "$last" ] && cp "$last" "$OUT/grpo_last_samples.png"
