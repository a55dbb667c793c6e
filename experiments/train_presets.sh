#!/usr/bin/env bash
# Trains the `cs236` (40 epochs) and `default` presets on binarized_mnist, evaluates the best checkpoint of each
# on the whole test split (ELBO and the K = 5000 importance-weighted NLL), and draws samples. Outputs: experiments/results/<preset>/{metrics.jsonl,eval.jsonl,*.png}.
# Usage: bash experiments/train_presets.sh [preset ...]     (MANUAL_DIR, DATA_DIR and RUNS_DIR may be set)
# Re-running resumes each run from its checkpoints in $RUNS_DIR/<preset>.
set -euo pipefail
cd "$(dirname "$0")/.."
MANUAL_DIR=${MANUAL_DIR:-../shared/data/binarized_mnist}
DATA_DIR=${DATA_DIR:-$HOME/tensorflow_datasets}
RUNS_DIR=${RUNS_DIR:-runs}
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(cs236 default)
for preset in "${presets[@]}"; do
  epochs=()
  [ "$preset" = cs236 ] && epochs=(--epochs 40)
  workdir="$RUNS_DIR/$preset"
  results="experiments/results/$preset"
  mkdir -p "$results"
  python -m vae_jax train --workdir "$workdir" --config "$preset" "${epochs[@]}" --no-progress \
    --manual-dir "$MANUAL_DIR" --data-dir "$DATA_DIR"
  rm -f "$workdir/eval.jsonl"
  python -m vae_jax eval --workdir "$workdir" --split test --iwae-samples 5000 --data-dir "$DATA_DIR"
  python -m vae_jax sample --workdir "$workdir" --out "$results/samples.png" --data-dir "$DATA_DIR"
  cp "$workdir/metrics.jsonl" "$workdir/eval.jsonl" "$results/"
done
