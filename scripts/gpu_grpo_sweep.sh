#!/usr/bin/env bash
# Self-evolution sweep on one GPU in about 8 minutes. Several GRPO runs of the tiny generator run side by side
# (configs/grpo-tiny-evolved.yaml, one override set each, below; early-1e5 is the config itself). Each keeps
# every checkpoint's EMA and is then scored move by move (benchmarks/grpo_moves.py). The best checkpoints of the
# KEEP best runs come back as tiny weights with their sampler, beside sweep.json (every row) and sweep_logs.tgz
# (logs, configs, per-run tables).
# With WAN=1 the full-size Wan 2.1 I2V GRPO step (benchmarks/diffusers_overhead.py --full-wan21 --grpo-step)
# runs beside them. Same environment as scripts/gpu_session.sh (wheels in .whl/, MiniLM table in .device/).
#   MINUTES=5.5 bash scripts/gpu_grpo_sweep.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
MINUTES=${MINUTES:-5.5} DEVICE=${DEVICE:-cuda} ROOT=${ROOT:-runs/sweep} WAN=${WAN:-1} KEEP=${KEEP:-3}
THREADS=${THREADS:-2} PER_MOVE=${PER_MOVE:-16} TRAINED=${TRAINED:-48} EXTRA=${EXTRA:-}  # ONLY="late-1e5 ...": a subset
. "$(dirname "$0")/gpu_env.sh"
SETS=(--set keep_ema=true)
[ -f .device/minilm_table.safetensors ] && SETS+=(--set text_table=.device/minilm_table.safetensors)
declare -A RUNS=(
  [early-1e5]=""
  [early-only-1e4]="lr=1e-4 heldout_moves=only"
  [late-1e5]="sde_window=[6,10] noise_level=0.2"
  [late-3e5]="sde_window=[6,10] noise_level=0.2 lr=3e-5 beta=0.04"
  [late-only-1e5]="sde_window=[6,10] noise_level=0.2 heldout_moves=only"
  [lora-late]="sde_window=[6,10] noise_level=0.2 lora_rank=32 lora_alpha=64 lr=1e-4"
)
mkdir -p "$ROOT"
t0=$(date +%s)
if [ "$WAN" = 1 ]; then
  timeout 300 $PY benchmarks/diffusers_overhead.py --full-wan21 --lora-step --grpo-step --steps 20 --repeats 1 \
    --out "$ROOT/diffusers_overhead_full.json" >"$ROOT/wan.log" 2>&1 &
fi
for name in ${ONLY:-${!RUNS[@]}}; do
  over=(); for kv in ${RUNS[$name]} $EXTRA; do over+=(--set "$kv"); done
  (
    timeout $(( ${MINUTES%.*} * 60 + 90 )) $PY -m spiral.cli train grpo --config configs/grpo-tiny-evolved.yaml \
      --out "$ROOT/$name" --device "$DEVICE" --minutes "$MINUTES" --steps 1000 --threads "$THREADS" \
      "${SETS[@]}" "${over[@]}" >"$ROOT/$name.log" 2>&1
    timeout 120 $PY benchmarks/grpo_moves.py --runs "$ROOT/$name" --device "$DEVICE" --threads "$THREADS" \
      --per-move "$PER_MOVE" --trained "$TRAINED" --export-best 1 --export-dir "$ROOT/best" \
      --out "$ROOT/$name/moves.json" >"$ROOT/$name.moves.log" 2>&1
  ) &
done
wait
echo "sweep: $(( $(date +%s) - t0 )) s"
$PY - "$ROOT" "$OUT" "$KEEP" <<'PY'
import json, shutil, sys
from pathlib import Path
root, out, keep = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rows, best = [], []
for f in sorted(root.glob("*/moves.json")):
    res = json.loads(f.read_text())
    rows += [r for r in res["rows"] if r["run"] != "base" or not any(x["run"] == "base" for x in rows)]
    runs = [r for r in res["rows"] if r["run"] != "base"]
    if res["exported"] and runs:
        top = max(runs, key=lambda r: (r["est_step_success_judge"], r["est_step_success_critic"]))
        best.append((top["est_step_success_judge"], top["est_step_success_critic"], res["exported"][0], top))
best.sort(key=lambda b: b[:2], reverse=True)
for _, _, path, top in best[:keep]:
    shutil.copy(path, out / Path(path).name)
for r in rows:
    moves = "  ".join(f"{k} {v['judge']}/{v['critic']}/{v['n']}"
                      for k, v in r.items() if isinstance(v, dict) and "n" in v)
    print(f"{Path(r['run']).name:16s} step {r['step']:4d}  est judge {r['est_step_success_judge']:.3f}  critic "
          f"{r['est_step_success_critic']:.3f}  {moves}")
(out / "sweep.json").write_text(json.dumps({"rows": rows, "shipped_candidates": [b[2] for b in best[:keep]]}, indent=2))
PY
tar czf "$OUT/sweep_logs.tgz" "$ROOT"/*.log "$ROOT"/*/log.jsonl "$ROOT"/*/config.json "$ROOT"/*/moves.json \
  "$ROOT"/diffusers_overhead_full.json 2>/dev/null
tail -n 5 "$ROOT"/*.log
