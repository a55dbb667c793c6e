#!/usr/bin/env bash
# Issue #4's GPU measurements in one command, on a machine with an NVIDIA GPU and the CUDA builds of JAX and PyTorch:
#   MANUAL_DIR=<folder of the original files> bash experiments/gpu_check.sh
# or, where the decoded splits were prepared elsewhere (experiments/README.md), with TFDS_DATA_DIR and no MANUAL_DIR.
# 1. the benchmark (cs236 epoch, PyTorch eager and torch.compile on the same GPU, K = 5000 evaluation), written to
#    experiments/results/benchmark_gpu.json with the device name;
# 2. the numerical tests on the GPU: the PyTorch cross-checks, closed forms and training steps at their stated
#    tolerances (the data, CLI and profile tests need ../shared/data or the CPU; the in-epoch progress callback
#    exists only where the epoch is compiled for the CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python -c "import jax; assert jax.default_backend() == 'gpu', f'JAX runs on {jax.default_backend()}, not a GPU'"
MANUAL_DIR=${MANUAL_DIR:-}
# One round: a dedicated GPU drifts little, and a lent GPU's time is short (11 cases, each a fresh process).
python experiments/benchmark.py ${MANUAL_DIR:+--manual-dir "$MANUAL_DIR"} --rounds 1 \
  --out experiments/results/benchmark_gpu.json
python -m pytest -q tests/test_distributions.py tests/test_objective.py tests/test_iwae.py tests/test_models.py \
  tests/test_priors.py tests/test_torch_reference.py tests/test_train.py \
  --deselect tests/test_train.py::test_progress_reports_the_running_loss_from_inside_the_epoch
