#!/usr/bin/env bash
# Trains one run, evaluates its best checkpoint (or that of epoch EVAL_EPOCH) on the whole test split (ELBO and the
# importance-weighted NLL, K = 5000 unless IWAE_K says otherwise) and draws samples from the same checkpoint.
# Outputs: experiments/results/NAME/{metrics.jsonl,eval.jsonl,samples*.png}.
# Usage: bash experiments/train_and_eval.sh NAME PRESET [train options and key=value overrides ...]
# Environment: EVAL_EPOCH (default: the best validation loss), MANUAL_DIR (default ../shared/data/binarized_mnist),
# DATA_DIR, RUNS_DIR (default runs), IWAE_K, MNIST_DIR (default ../shared/data/mnist: the labels of the latent scatter
# of a 2-D model).
# Re-running resumes the run from its checkpoints in $RUNS_DIR/NAME.
set -euo pipefail
cd "$(dirname "$0")/.."
name=$1 preset=$2
shift 2
MANUAL_DIR=${MANUAL_DIR:-../shared/data/binarized_mnist}
DATA_DIR=${DATA_DIR:-${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}}
workdir="${RUNS_DIR:-runs}/$name"
results="experiments/results/$name"
mkdir -p "$results"
python -m vae_jax train --workdir "$workdir" --config "$preset" --no-progress \
  --manual-dir "$MANUAL_DIR" --data-dir "$DATA_DIR" "$@"
rm -f "$workdir/eval.jsonl"
epoch=(${EVAL_EPOCH:+--epoch "$EVAL_EPOCH"})
python -m vae_jax eval --workdir "$workdir" "${epoch[@]}" --split test --iwae-samples "${IWAE_K:-5000}" \
  --data-dir "$DATA_DIR"
python -m vae_jax sample --workdir "$workdir" "${epoch[@]}" --out "$results/samples.png" --data-dir "$DATA_DIR" \
  --mnist-dir "${MNIST_DIR:-../shared/data/mnist}"
cp "$workdir/metrics.jsonl" "$workdir/eval.jsonl" "$results/"
