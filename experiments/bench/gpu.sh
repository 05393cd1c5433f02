#!/usr/bin/env bash
# The GPU benchmark: one command, under 8 minutes on one H100 / H200, one JSON line per figure.
#
#   bash experiments/bench/gpu.sh             # on the accelerator (jax with CUDA must be installed there)
#   bash experiments/bench/gpu.sh --dry_run   # the same steps on the CPU with the nano / tiny presets (tests)
#
# Figures: {"figure": "matmul"} the measured float32 / bfloat16 matmul rates and the chip's datasheet bf16 peak;
# {"figure": "dpo_step"} the DPO train step, bf16, on the ~0.47B preset "500m" (8 pairs of 256 + 256 tokens,
# reference in the step), with MFU against the peak and against the measured bf16 rate (aim ≥ 0.45);
# {"figure": "sampler"} the KV-cache sampler at batch 64 (128-token prompts, 128 new tokens), bf16, with its
# decode floor; {"figure": "ppo_iteration"} PPO iterations (64 rollouts, rollout and update times) on the
# built-in task with the 500m policy. Every line names the device.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
DRY=0
[[ "${1:-}" == "--dry_run" ]] && DRY=1
if [[ $DRY == 1 ]]; then
  PRESET=nano; GEN_PRESET=nano; MM=256; PAIRS=2; LEN=16; BATCH=8; NEW=8; STEPS=1; WARM=1; PPO_STEPS=2; PPO_BATCH=8
  export JAX_PLATFORMS=cpu
else
  PRESET=500m; GEN_PRESET=500m; MM=8192; PAIRS=8; LEN=256; BATCH=64; NEW=128; STEPS=5; WARM=2; PPO_STEPS=4; PPO_BATCH=64
  if ! $PY -c "import jax, sys; sys.exit(jax.devices()[0].platform == 'cpu')"; then
    echo '{"figure": "error", "error": "no accelerator visible to jax (install jax[cuda12] there, or use --dry_run)"}'
    exit 1
  fi
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

$PY experiments/bench/matmul.py --n $MM --json | tee "$OUT/matmul.json"

$PY experiments/bench/dpo.py --preset $PRESET --dtype bfloat16 --batch_pairs $PAIRS --prompt_len $LEN \
    --completion_len $LEN --steps $STEPS --warmup $WARM --json > "$OUT/dpo.json"
$PY - "$OUT" <<'PYEOF'
import json, sys
d = sys.argv[1]
mm, r = json.load(open(f"{d}/matmul.json")), json.load(open(f"{d}/dpo.json"))
achieved = r["mfu"] * r["matmul_flops"]  # dpo.py's MFU is against its own float32 matmul rate
r.update(figure="dpo_step", device=mm["device"], achieved_flops=achieved, mfu_vs_bf16_matmul=achieved / mm["bf16_flops"],
         mfu_vs_peak=achieved / mm["peak_bf16_flops"] if mm["peak_bf16_flops"] else None)
print(json.dumps(r))
PYEOF

$PY experiments/bench/generate.py --preset $GEN_PRESET --dtype bfloat16 --batch $BATCH --prompt_len $LEN \
    --new_tokens $NEW --repeats 2 --json | $PY -c "import json,sys; r=json.load(sys.stdin); r['figure']='sampler'; print(json.dumps(r))"

WD="$OUT/ppo"
$PY -m jaxalign.main --config=configs/ppo.py --workdir="$WD" --config.init_from= --config.model.preset=$PRESET \
    --config.model.dtype=bfloat16 --config.train.steps=$PPO_STEPS --config.train.batch_size=$PPO_BATCH \
    --config.eval.every=0 --config.eval.prompts=8 --config.train.checkpoint_every=1000 > /dev/null 2> "$OUT/ppo.err" \
  || { tail -5 "$OUT/ppo.err" >&2; exit 1; }
$PY - "$WD" "$PRESET" <<'PYEOF'
import json, sys
import jax
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/metrics.jsonl") if '"train/loss"' in l]
timed = rows[1:] or rows  # the first iteration compiles
mean = lambda k: sum(r[k] for r in timed) / len(timed)
print(json.dumps(dict(figure="ppo_iteration", device=jax.devices()[0].device_kind, preset=sys.argv[2],
                      iterations=len(timed), step_time_s=mean("perf/step_time_s"),
                      rollout_time_s=mean("perf/rollout_time_s"), update_time_s=mean("perf/update_time_s"),
                      tokens_per_s=mean("perf/tokens_per_s"), mfu=mean("perf/mfu"),
                      compile_time_s=rows[0]["perf/compile_time_s"])))
PYEOF
