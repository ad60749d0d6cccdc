#!/usr/bin/env bash
# Data-parallel scaling of the real trainer (python -m trainer train): 1 GPU, then N GPUs by torchrun,
# same model, same global batch and micro-batch, synthetic tokens (no dataset needed), no checkpoints.
#
#   bash bench/train_multi.sh                 # phi-1.5 at seq 2048 on 1 and 2 GPUs, 8 steps each
#   NGPU=8 CONFIG=demo-100m STEPS=12 bash bench/train_multi.sh
#   STRATEGY=fsdp bash bench/train_multi.sh   # FSDP2 instead of DDP for the N-GPU run
#
# Prints one line per run and a last line `scaling=<rate_N / (N x rate_1)>` (target >= 0.90).
# tokens/s is the tokens of steps 2.. over their seconds (step 1 includes torch.compile), as the trainer's closing line.
# Settings, as environment variables: NGPU (2), CONFIG (phi-1.5), STEPS (8), MICRO (8), GLOBAL
# (MICRO x NGPU x 4), STRATEGY (ddp | fsdp), OUT (/tmp/train_multi). -h/--help prints this text.
set -euo pipefail
if (( $# )); then
    sed -n '2,/^set /s/^# \{0,1\}//p' "$0"
    case $1 in -h|--help) exit 0 ;; *) echo "error: unknown argument '$1' (settings are environment variables)" >&2; exit 2 ;; esac
fi
cd "$(dirname "$0")/.."
export NCCL_NVLS_ENABLE=0          # NVLink multicast stays off on the lent machines
NGPU=${NGPU:-2}
CONFIG=${CONFIG:-phi-1.5}
STEPS=${STEPS:-8}
MICRO=${MICRO:-8}
GLOBAL=${GLOBAL:-$((MICRO * NGPU * 4))}
STRATEGY=${STRATEGY:-ddp}
OUT=${OUT:-/tmp/train_multi}
python - "$NGPU" <<'PY' || exit 2
import sys
try:
    import torch
except ImportError:
    sys.exit('error: bench/train_multi.sh needs torch: pip install -e ".[train]"')
have = torch.cuda.device_count()
if have < int(sys.argv[1]):
    sys.exit(f"error: bench/train_multi.sh needs {sys.argv[1]} CUDA GPUs (NGPU), {have} visible")
PY
mkdir -p "$OUT"
COMMON=(--config "$CONFIG" --synthetic --max-steps "$STEPS" --no-progress --resume never
        --set "train.global_batch=$GLOBAL" --set "train.micro_batch=$MICRO"
        --set checkpoint.every=0 --set checkpoint.at_exit=false --set log.plot=false --set log.every=1)

python -m trainer train "${COMMON[@]}" --run-dir "$OUT/1gpu" 2>&1 | tee "$OUT/1gpu.log"
torchrun --standalone --nproc_per_node "$NGPU" -m trainer train "${COMMON[@]}" \
    --set "distributed.strategy=$STRATEGY" --run-dir "$OUT/${NGPU}gpu" 2>&1 | tee "$OUT/${NGPU}gpu.log"

python - "$OUT" "$NGPU" "$CONFIG" "$STRATEGY" <<'PY'
import json, sys
from pathlib import Path

out, n, config, strategy = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
except Exception:
    gpu = "?"
rates = {}
for k in (1, n):
    recs = [json.loads(x) for x in (out / f"{k}gpu" / "metrics.jsonl").read_text().splitlines()]
    warm = recs[1:] or recs
    seconds = sum(r["step_s"] for r in warm)
    rate = sum(r["tokens_per_s"] * r["step_s"] for r in warm) / seconds  # a slow step weighs as long as it took
    mfu = sum(r["mfu"] * r["step_s"] for r in warm) / seconds if all(r.get("mfu") is not None for r in warm) else None
    mem = max((r.get("mem_gb") or 0) for r in recs)
    rates[k] = rate
    print(f"gpus={k} config={config} strategy={'none' if k == 1 else strategy} tokens_per_s={rate:.0f} "
          f"tokens_per_s_per_gpu={rate / k:.0f} mfu={float('nan') if mfu is None else mfu:.4f} "
          f"peak_mem_gb={mem} gpu={gpu}")
print(f"scaling={rates[n] / (n * rates[1]):.3f} gpus={n} tokens_per_s_1={rates[1]:.0f} tokens_per_s_{n}={rates[n]:.0f} gpu={gpu}")
PY
