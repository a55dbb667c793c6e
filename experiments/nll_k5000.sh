#!/usr/bin/env bash
# The standard-protocol NLL (K = 5000, whole test split) of study runs, for the README's table of published
# figures: appends the eval line to experiments/results/NAME/eval.jsonl beside the study's own (K = 1000) line.
# Usage: bash experiments/nll_k5000.sh NAME [NAME ...]   (runs trained by the study scripts, in $RUNS_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}}
for name in "$@"; do
  python -m vae_jax eval --workdir "${RUNS_DIR:-runs}/$name" --split test --iwae-samples 5000 --data-dir "$DATA_DIR" \
    >> "experiments/results/$name/eval.jsonl"
done
