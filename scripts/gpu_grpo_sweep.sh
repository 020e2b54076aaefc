#!/usr/bin/env bash
# Self-evolution sweep on one GPU in about 8 minutes. Several GRPO runs of the tiny generator run side by side
# (the BASE config with one override set each, one per line of the SWEEP file: "name key=value ..."). Each keeps
# every checkpoint's EMA and is then scored move by move (benchmarks/grpo_moves.py; with MAX_DRIFT only checkpoints
# whose estimated drift is at most that can be picked). The best checkpoints of the KEEP best runs come back as tiny
# weights with their sampler, beside sweep.json (every row) and sweep_logs.tgz (logs, configs, per-run tables).
# With WAN=1 the full-size Wan 2.1 I2V GRPO step (benchmarks/diffusers_overhead.py --full-wan21 --grpo-step)
# runs beside them. Same environment as scripts/gpu_session.sh (wheels in .whl/, MiniLM table in .device/).
#   SWEEP=my-sweep.txt MINUTES=5.5 bash scripts/gpu_grpo_sweep.sh          # BASE: configs/train/grpo-tiny-reverse-anchor.yaml
# The sweeps that picked the withdrawn first tiny-evolved are in git history (git show 15e7b3b:configs/sweeps/).
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
MINUTES=${MINUTES:-5.5} DEVICE=${DEVICE:-cuda} ROOT=${ROOT:-runs/sweep} WAN=${WAN:-1} KEEP=${KEEP:-3}
THREADS=${THREADS:-2} PER_MOVE=${PER_MOVE:-16} TRAINED=${TRAINED:-48} EXTRA=${EXTRA:-}  # ONLY="late-1e5 ...": a subset
SWEEP=${SWEEP:?set SWEEP to a sweep file: one run per line, "name key=value ..."} BASE=${BASE:-configs/train/grpo-tiny-reverse-anchor.yaml}
SCORE_S=${SCORE_S:-120} MAX_DRIFT=${MAX_DRIFT:-}
. "$(dirname "$0")/gpu_env.sh"
SETS=(--set keep_ema=true)
[ -f .device/minilm_table.safetensors ] && SETS+=(--set text_table=.device/minilm_table.safetensors)
declare -A RUNS=()
while read -r name over; do
  [ -n "$name" ] && [ "${name:0:1}" != "#" ] && RUNS[$name]=$over
done <"$SWEEP"
mkdir -p "$ROOT"
t0=$(date +%s)
if [ "$WAN" = 1 ]; then
  timeout 300 $PY benchmarks/diffusers_overhead.py --full-wan21 --lora-step --grpo-step --steps 20 --repeats 1 \
    --out "$ROOT/diffusers_overhead_full.json" >"$ROOT/wan.log" 2>&1 &
fi
for name in ${ONLY:-${!RUNS[@]}}; do
  over=(); for kv in ${RUNS[$name]} $EXTRA; do over+=(--set "$kv"); done
  (
    timeout $(( ${MINUTES%.*} * 60 + 90 )) $PY -m spiral.cli train grpo --config "$BASE" \
      --out "$ROOT/$name" --device "$DEVICE" --minutes "$MINUTES" --steps 1000 --threads "$THREADS" \
      "${SETS[@]}" "${over[@]}" >"$ROOT/$name.log" 2>&1
    timeout "$SCORE_S" $PY benchmarks/grpo_moves.py --runs "$ROOT/$name" --device "$DEVICE" --threads "$THREADS" \
      --per-move "$PER_MOVE" --trained "$TRAINED" --export-best 1 --export-dir "$ROOT/best" \
      ${MAX_DRIFT:+--max-drift "$MAX_DRIFT"} \
      --out "$ROOT/$name/moves.json" >"$ROOT/$name.moves.log" 2>&1
  ) &
done
wait
echo "sweep: $(( $(date +%s) - t0 )) s"
$PY - "$ROOT" "$OUT" "$KEEP" "$MAX_DRIFT" <<'PY'
import json, shutil, sys
from pathlib import Path
root, out, keep = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
cap = float(sys.argv[4]) if sys.argv[4] else float("inf")
rows, best, bases = [], [], set()
for f in sorted(root.glob("*/moves.json")):
    res = json.loads(f.read_text())
    for r in res["rows"]:
        if r["run"] == "base":  # the start weights, once per weights and sampler
            key = json.dumps([r.get("weights"), r["sampler"]], sort_keys=True)
            if key in bases:
                continue
            bases.add(key)
        rows.append(r)
    runs = [r for r in res["rows"] if r["run"] != "base" and r["est_drift"] <= cap]
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
          f"{r['est_step_success_critic']:.3f}  drift {r['est_drift']:.4f}  {moves}")
(out / "sweep.json").write_text(json.dumps({"rows": rows, "shipped_candidates": [b[2] for b in best[:keep]]}, indent=2))
PY
tar czf "$OUT/sweep_logs.tgz" "$ROOT"/*.log "$ROOT"/*/log.jsonl "$ROOT"/*/config.json "$ROOT"/*/moves.json \
  "$ROOT"/diffusers_overhead_full.json 2>/dev/null
tail -n 5 "$ROOT"/*.log
