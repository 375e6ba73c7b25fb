#!/usr/bin/env bash
# Every GPU figure of benchmarks/RESULTS.md in one command, on any CUDA host with
# jax, flax, optax, orbax-checkpoint and pandas installed (PyTorch too for the
# reference step). Writes everything under $OUT (default benchmarks/out/device):
#
#   env.txt            devices, versions, nvidia-smi
#   train_step.*       the jitted train step at B=16, D=2048, N=20, T in {256, 750, 2048}
#                      (T=750: the paper's shapes), float32 and bfloat16 compute, fused
#                      and factorized propagation, one run
#   train_step_breakdown.*  the step's parts (network, losses, update) at T=750
#   torch_reference.*  the same step written the straightforward way in PyTorch
#                      (per-video Python loop, dense l x l x N propagation), with its
#                      ratio to the jaxseg step of the same run
#   train_loop.*       the training loop (bfloat16) with batches stacked on the host and
#                      copied, against device-resident features (train.device_data)
#   loss_throughput.*  eq. 13 in four forms and the four-term loss, B=16, D=2048,
#                      T in {256, 750, 2048, 4096, 8192} (cosine S, the configs' default)
#   dot/loss_throughput.*  factorized and fused with S = f f^T as printed, T = 8192
#   *.log              what each script printed
#
# Packages the bare GPU image may lack (ml-collections for jaxseg.config,
# tabulate for the markdown tables) are installed from .device-wheels/ when it is
# there; make it on a machine with a package index with
# `bash benchmarks/device_check.sh --prepare` and copy it beside the script on
# the GPU host. Without tabulate or matplotlib the tables are still
# written and the plots skipped. Each step has its own time limit, so a slow one
# does not cost the others; loss_throughput keeps a partial CSV if stopped.
#
#   bash benchmarks/device_check.sh --prepare   # here, once: fetch the wheels
#   bash benchmarks/device_check.sh             # there: about 4-5 minutes on an H200
#   QUICK=1 bash benchmarks/device_check.sh     # small shapes, a CPU smoke run (tests)
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
  python3 -m pip download --no-deps --only-binary=:all: -d .device-wheels \
    "ml-collections==1.1.0" "tabulate==0.10.0"
  exit $?
fi

OUT=${OUT:-benchmarks/out/device}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
QUICK_ARGS=()
STEP_LENGTHS=(256 750 2048)
# QUICK: small shapes, one T for the step.
if [ -n "${QUICK:-}" ]; then QUICK_ARGS=(--quick); STEP_LENGTHS=(64); fi

if ! $PY -c "import ml_collections, tabulate" 2>/dev/null && [ -d .device-wheels ]; then
  LIB=$(mktemp -d)
  $PY -m pip install -q --no-index --no-deps --find-links .device-wheels --target "$LIB" \
    ml-collections tabulate 2>&1 | tail -3
  export PYTHONPATH="$LIB${PYTHONPATH:+:$PYTHONPATH}"
fi

{
  date -u
  $PY - <<'EOF'
import jax, jaxlib, sys
print("python", sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__)
print("devices", jax.devices())
for mod in ("flax", "optax", "orbax.checkpoint", "pandas", "ml_collections", "tabulate",
            "matplotlib"):
  try:
    m = __import__(mod, fromlist=["_"])
    print(mod, getattr(m, "__version__", "?"))
  except Exception as e:  # pylint: disable=broad-except
    print(mod, "MISSING", e)
EOF
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv 2>&1
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

timeout "${TRAIN_STEP_LIMIT:-240}" $PY benchmarks/train_step.py --out "$OUT" \
  --methods fused factorized --compute-dtypes float32 bfloat16 --lengths "${STEP_LENGTHS[@]}" \
  --breakdown 750 --feed host device "${QUICK_ARGS[@]}" 2>&1 \
  | tee "$OUT/train_step.log"
echo "train_step exit: ${PIPESTATUS[0]}"

# The PyTorch reference needs torch; the JAX step above has released the GPU.
if $PY -c "import torch" 2>/dev/null; then
  TORCH_ARGS=(--jax-csv "$OUT/train_step.csv")
  if [ -n "${QUICK:-}" ]; then TORCH_ARGS+=(--quick); fi
  JAX_PLATFORMS=cpu $PY benchmarks/torch_reference.py --check 2>&1 | tee "$OUT/torch_reference.log"
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "${TORCH_LIMIT:-120}" \
    $PY benchmarks/torch_reference.py --out "$OUT" "${TORCH_ARGS[@]}" 2>&1 \
    | tee -a "$OUT/torch_reference.log"
  echo "torch_reference exit: ${PIPESTATUS[0]}"
else
  echo "PyTorch is not installed: no reference step" | tee "$OUT/torch_reference.log"
fi

# QUICK: every form at small shapes (tests/test_benchmarks.py checks them there).
LOSS_ARGS=()
if [ -n "${QUICK:-}" ]; then LOSS_ARGS=(--quick); fi
timeout "${LOSS_LIMIT:-300}" $PY benchmarks/loss_throughput.py --out "$OUT" "${LOSS_ARGS[@]}" 2>&1 \
  | tee "$OUT/loss_throughput.log"
echo "loss_throughput exit: ${PIPESTATUS[0]}"

# S = f f^T as printed (the configs use cosine): the two factorized forms at
# T = 8192 only.
DOT_LENGTHS=(--lengths 8192)
if [ -n "${QUICK:-}" ]; then DOT_LENGTHS=(); fi
timeout "${DOT_LIMIT:-90}" $PY benchmarks/loss_throughput.py --out "$OUT/dot" --similarity dot \
  --methods factorized fused --no-total "${DOT_LENGTHS[@]}" "${QUICK_ARGS[@]}" 2>&1 \
  | tee "$OUT/loss_throughput_dot.log"
echo "loss_throughput (dot) exit: ${PIPESTATUS[0]}"

