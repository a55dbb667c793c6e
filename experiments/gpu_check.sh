#!/usr/bin/env bash
# The GPU measurements in one command, under 9 minutes on one NVIDIA H100 or H200 with the CUDA builds of JAX and
# PyTorch and vae_jax's decoded splits (no TFDS needed):
#   TFDS_DATA_DIR=<folder holding vae_jax_cache/binarized_mnist/{train,validation,test}.npy> OUT=<folder> \
#     bash experiments/gpu_check.sh
# It remakes every table of the GPU measurements (docs/performance.md; ../shared/gpu/README.md at 6d081d1):
# 1. benchmark.py --cases gpu: the epoch of vae_jax (float32, bfloat16, batch 100/1024/4096, Adam on one flattened
#    vector, XLA's autotuning off), a minimal JAX step (autotuning on and off), PyTorch eager (plain and fused Adam)
#    and torch.compile on the same GPU, launches per step, the K = 5000 evaluation, the matrix-multiply peaks;
# 2. time_to_result.py: `train --config cs236 --epochs 40`, `eval --split test` and the K = 5000 eval, each in a fresh
#    process with the compilation cache cold and warm, split by phase, with the GPU run's test NELBO and NLL;
# 3. the numerical tests on the GPU: the PyTorch cross-checks (terms, gradients, optimizer steps, the HVAE, the
#    importance-weighted bound, per-example inference) and the closed forms.
# Every step has a time limit and writes its log and JSON to $OUT as it goes. DRY_RUN=1 runs it all on the CPU with
# tiny sizes (1 epoch, K = 20), to check the script itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-experiments/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TF_CPP_MIN_LOG_LEVEL=3
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most $limit s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name: exit $? ($(tail -n 1 "$OUT/$name.log" | cut -c1-200))"
}
epochs=3 iwae_k=5000 train_epochs=40 scale=1
if [ "${DRY_RUN:-0}" = 1 ]; then
  epochs=1 iwae_k=20 train_epochs=1 scale=3
else
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
  python -c "import jax; assert jax.default_backend() == 'gpu', f'JAX runs on {jax.default_backend()}, not a GPU'" \
    || exit 1
fi
run benchmark $((280 * scale)) python experiments/benchmark.py --cases gpu --rounds 1 --epochs "$epochs" \
  --iwae-k "$iwae_k" --compilation-cache "$OUT/benchmark_cache" --out "$OUT/benchmark_gpu.json"
run time_to_result $((150 * scale)) python experiments/time_to_result.py --rounds 1 --train-epochs "$train_epochs" \
  --iwae-samples "$iwae_k" --variants cold warm --out "$OUT/time_to_result_gpu.json"
run tests $((90 * scale)) python -m pytest -q tests/test_torch_reference.py tests/test_distributions.py \
  "tests/test_iwae.py::test_bound_matches_pytorch_with_chunks_and_padding" \
  "tests/test_inference.py::test_refinement_takes_pytorch_s_adam_steps_on_the_same_noise_in_float64"
