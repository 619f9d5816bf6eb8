#!/usr/bin/env bash
# Continue training the embedded `tiny` model on one GPU for a fixed wall-clock budget.
#
#   scripts/train-tiny-gpu.sh RUN_DIR BUDGET_S [EXPORT_DIR]
#
# 1. checks the GPU paths (motion features, a forward) against the CPU,
# 2. renders the scene pool with forked workers,
# 3. probes throughput with 100 steps of the real config,
# 4. trains with max_steps set so the learning rate decays over the remaining budget,
# 5. evaluates the EMA model on the held-out scenes (GPU) and writes the checkpoint (without the
#    optimizer state) to EXPORT_DIR as a tar split into 15 MB parts.
set -euo pipefail
RUN=${1:?run folder}; BUDGET=${2:?seconds}; EXPORT=${3:-}
CONFIG=${CONFIG:-configs/tiny-gpu.toml}
INIT=${INIT:-percept_cli/assets/tiny}
PROBE_STEPS=${PROBE_STEPS:-100}
DEVICE=${DEVICE:-cuda}  # DEVICE=cpu (with a small CONFIG) dry-runs steps 2-5 on a machine without a GPU
percept() { python3 -m percept_cli "$@"; }
t0=$SECONDS
mkdir -p "$RUN"

echo "== 1. GPU checks"
[ "$DEVICE" = cpu ] || python3 - <<'PY'
import torch
from percept_cli.models.dit import PerceptDiT
assert torch.cuda.is_available(), "no CUDA device"
print(torch.__version__, torch.cuda.get_device_name())
torch.manual_seed(0)
m = PerceptDiT(sample_size=8, patch_size=4, in_channels=3, cond_channels=6, hidden_size=64, depth=2, num_heads=2,
               num_labels=5, label_offset=1000, learn_sigma=False, motion_channels=8)
for p in m.parameters():  # non-zero everywhere, so the motion path matters
    p.data.normal_(0, 0.05)
x, t, y = torch.randn(6, 9, 32, 32), torch.randint(0, 1000, (6,)), torch.tensor([1000, 1002, 1003, 1001, 1002, 1000])
with torch.no_grad():
    cpu_f, cpu_o = m.motion_features(x, y), m(x, t, y)
    g = m.cuda()
    gpu_f, gpu_o = g.motion_features(x.cuda(), y.cuda()).cpu(), g(x.cuda(), t.cuda(), y.cuda()).cpu()
print("motion features max diff", (cpu_f - gpu_f).abs().max().item(), "output max diff", (cpu_o - gpu_o).abs().max().item())
assert (cpu_f - gpu_f).abs().max() < 1e-4 and (cpu_o - gpu_o).abs().max() < 1e-3
PY

echo "== 2. scene pool"
python3 - "$RUN" "$CONFIG" <<'PY'
import sys, time, tomllib
from pathlib import Path
from percept_cli.data.mixture import ScenePool
cfg = tomllib.loads(Path(sys.argv[2]).read_text())
n, size = cfg["train_scenes"], cfg["resolution"]
t = time.time()
ScenePool.cached(Path(sys.argv[1]) / f"scenes-{size}-0-{n}.npz", range(n), size, workers=cfg["render_workers"])
print(f"rendered {n} scenes in {time.time() - t:.0f} s")
PY

echo "== 3. throughput probe"
mkdir -p "$RUN-probe" && ln -sf "$(realpath "$RUN")"/scenes-*.npz "$RUN-probe/"  # the same pool
percept train --config "$CONFIG" --out "$RUN-probe" --init "$INIT" --max-steps "$PROBE_STEPS" 2>&1 | tail -2
rate=$(python3 -c "
import json,sys
recs=[json.loads(l) for l in open('$RUN-probe/log.jsonl')]
print(recs[-1]['samples_per_s'])")  # the last log window: past the start-up
echo "probe: $rate samples/s"

left=$(( BUDGET - (SECONDS - t0) - 100 ))  # leaves time for the last checkpoint, export and eval
if [ "$left" -lt 30 ]; then echo "error: BUDGET=$BUDGET s leaves $left s for training; give at least $((BUDGET - left + 30)) s" >&2; exit 2; fi
batch=$(python3 -c "import tomllib; print(tomllib.load(open('$CONFIG', 'rb'))['batch_size'])")
steps=$(python3 -c "print(int($rate * $left / $batch * 0.92))")
echo "== 4. training: $steps steps in at most $left s (t=$((SECONDS - t0)) s)"
percept train --config "$CONFIG" --out "$RUN" --init "$INIT" --max-steps "$steps" --max-time "$left" \
  2>&1 | awk 'NR % 20 == 1 || /rror/'
tail -1 "$RUN/log.jsonl"

if [ -n "$EXPORT" ]; then
  echo "== 5. export and eval (t=$((SECONDS - t0)) s)"
  mkdir -p "$EXPORT"
  cp "$RUN/log.jsonl" "$EXPORT/log.jsonl"
  tar cf - -C "$RUN" --exclude train_state.pt checkpoint-last | split -b 15M - "$EXPORT/checkpoint.tar.part-"
  timeout 90 python3 -m percept_cli eval --model "$RUN/checkpoint-last" --device "$DEVICE" --dtype bf16 --json \
    > "$EXPORT/eval.json" 2>/dev/null || echo "eval did not finish"
  cat "$EXPORT/eval.json" 2>/dev/null | head -c 2000 || true
fi
echo "done in $((SECONDS - t0)) s"
