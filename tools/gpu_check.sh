#!/usr/bin/env bash
# The statistics pass on CUDA, checked against CPU. PREPARED, NOT YET RUN: no GPU has been lent to
# this project's sessions so far (see docs/statistics-at-scale.md, "CUDA").
#
# What it does, on a machine with an NVIDIA GPU:
#   1. exports the zoo ResNet-50 and MobileNetV2 at 224x224 (random weights; needs torch: `make setup`),
#   2. writes 256 deterministic 224x224 RGB images (.npy),
#   3. runs `onnxmbs profile` on CPU and on CUDA (onnxruntime-gpu, in its own venv) and checks that
#      every per-channel count is exactly equal,
#   4. prints the tap's throughput as a ratio to plain CUDA inference (tools/bench_statistics.py,
#      steady state; target >= 0.95x) and CUDA vs CPU images/s of the whole statistics pass.
#
#   bash tools/gpu_check.sh                      # PyPI reachable
#   WHEELS=/path/to/wheels bash tools/gpu_check.sh   # offline: onnxruntime-gpu (+ nvidia-* CUDA/cuDNN) wheels
#   GPU_PY=/opt/ort-gpu/bin/python bash tools/gpu_check.sh   # a python that already has onnxruntime-gpu
#
# Environment: CPU_PY (python with onnxmbs + torch + onnxruntime, default .venv/bin/python),
# WORK (default artifacts/gpu_check), IMAGES (default 256), BATCH (default 32).
set -euo pipefail
cd "$(dirname "$0")/.."
CPU_PY=${CPU_PY:-.venv/bin/python}
WORK=${WORK:-artifacts/gpu_check}
IMAGES=${IMAGES:-256}
BATCH=${BATCH:-32}
CACHE=artifacts/bench   # where tools/bench_statistics.py looks for <model>_torch_224.onnx
mkdir -p "$WORK" "$CACHE"
export PYTHONPATH=$PWD

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || {
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi failed) — run this on a GPU machine" >&2; exit 1; }

# ---- 1. models (CPU python with torch)
for m in resnet50 mobilenet_v2; do
  [ -f "$CACHE/${m}_torch_224.onnx" ] || "$CPU_PY" -m onnxmbs zoo export "$m" --input-size 224 \
      --framework torch -o "$CACHE/${m}_torch_224.onnx"
done

# ---- 2. data: smooth random shapes + noise, uint8 NHWC, seeded
"$CPU_PY" - "$WORK/data.npy" "$IMAGES" <<'EOF'
import sys, numpy as np
path, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:224, 0:224] / 224.0
out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 224, 224, 3))
for i in range(n):
    f = rng.uniform(1, 8, (3, 2)); p = rng.uniform(0, 6.3, (3, 1, 1))
    img = 127 + 100 * np.sin(f[:, :1, None] * 6.3 * yy + f[:, 1:, None] * 6.3 * xx + p)
    out[i] = np.clip(img.transpose(1, 2, 0) + rng.normal(0, 20, (224, 224, 3)), 0, 255).astype(np.uint8)
out.flush()
EOF

# ---- 3. onnxruntime-gpu in its own venv (never next to the CPU onnxruntime)
if [ -z "${GPU_PY:-}" ]; then
  GPU_PY=$WORK/venv-gpu/bin/python
  if [ ! -x "$GPU_PY" ]; then
    python3 -m venv "$WORK/venv-gpu"
    FIND=(); [ -n "${WHEELS:-}" ] && FIND=(--no-index --find-links "$WHEELS")
    "$GPU_PY" -m pip install -q "${FIND[@]}" "onnxruntime-gpu[cuda,cudnn]" onnx onnx-graphsurgeon numpy click pillow tqdm
  fi
fi
"$GPU_PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

for m in resnet50 mobilenet_v2; do
  model=$CACHE/${m}_torch_224.onnx
  "$CPU_PY" -m onnxmbs profile "$model" --data "$WORK/data.npy" --provider cpu --batch-size "$BATCH" \
      --no-progress -o "$WORK/$m.cpu.json"
  "$GPU_PY" -m onnxmbs profile "$model" --data "$WORK/data.npy" --provider cuda --batch-size "$BATCH" \
      --no-progress -o "$WORK/$m.cuda.json"
done

# ---- 4. exact equality, and CUDA vs CPU images/s of the whole pass
"$CPU_PY" - "$WORK" <<'EOF'
import json, sys
work = sys.argv[1]
bad = 0
for m in ("resnet50", "mobilenet_v2"):
    cpu, cuda = (json.load(open(f"{work}/{m}.{p}.json")) for p in ("cpu", "cuda"))
    same = cpu["images"] == cuda["images"] and cpu["taps"] == cuda["taps"]
    bad += not same
    rate = lambda d: d["images"] / d["seconds"]
    print(f"{m}: counts {'EQUAL' if same else 'DIFFER'} ({cuda['provider']} vs {cpu['provider']}); "
          f"pass {rate(cuda):.1f} img/s CUDA vs {rate(cpu):.1f} img/s CPU = {rate(cuda) / rate(cpu):.1f}x")
sys.exit(1 if bad else 0)
EOF

# ---- 5. the tap's throughput vs plain CUDA inference (steady state, same session options)
"$GPU_PY" tools/bench_statistics.py --provider cuda --batch 1 "$BATCH" --cache "$CACHE" --bound
echo "gpu_check: done on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(date -u +%F)"
