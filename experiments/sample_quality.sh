#!/usr/bin/env bash
# Study 8 of issue #35: sample quality against likelihood, on dynamically binarized MNIST and Fashion-MNIST.
# Per dataset: trains three VAEs of the cs236 networks (z = 10, 300-300 ELU MLPs, 40 epochs): the standard VAE, the
# VampPrior (500 pseudo-inputs) and the two-level HVAE with a VampPrior; evaluates each (ELBO and the K = IWAE_K NLL,
# 1000 by default); then scores N = 10,000 samples of each against the first 10,000 test images with the dataset's
# classifier (`vae_jax eval --sample-quality`): the three models from their priors, the standard VAE at temperatures
# 0.5, 0.7, 0.85, from an ex-post Gaussian mixture (K = 10) and from a second-stage VAE on its aggregate posterior.
# Outputs: experiments/results/samples/<dataset>/<run>/{metrics.jsonl,eval.jsonl,samples*.png,grid_*.png}; the
# report (tables and the side-by-side figure): experiments/sample_quality_report.py. Resumable; STAGES="train" or
# "score" runs one half (default both); RUNS names the models (default all three).
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE_K=${IWAE_K:-1000}
DATA_DIR=${DATA_DIR:-${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}}
N=${SAMPLES:-10000}
runs=${RUNS:-vae vampprior hvae_vampprior}
declare -A OPTIONS=([vae]="" [vampprior]="model.prior=vamp" [hvae_vampprior]="model.prior=vamp model.stochastic_layers=2")
for dataset in ${DATASETS:-mnist fashion_mnist}; do
  export MANUAL_DIR=../shared/data/$dataset
  if [[ " ${STAGES:-train score} " == *" train "* ]]; then
    for run in $runs; do
      bash experiments/train_and_eval.sh "samples/$dataset/$run" cs236 --epochs 40 "dataset=$dataset" ${OPTIONS[$run]}
    done
  fi
  [[ " ${STAGES:-train score} " == *" score "* ]] || continue
  score() {  # RUN TAG [eval options]: one sample-quality line in the run's eval.jsonl, and its grid of samples
    local run=$1 tag=$2
    shift 2
    python -m vae_jax eval --workdir "${RUNS_DIR:-runs}/samples/$dataset/$run" --sample-quality "$N" \
      --sample-grid "experiments/results/samples/$dataset/$run/grid_$tag.png" --data-dir "$DATA_DIR" \
      --manual-dir "$MANUAL_DIR" "$@"
  }
  for run in $runs; do score "$run" prior; done
  for temperature in 0.5 0.7 0.85; do score vae "t$temperature" --temperature "$temperature"; done
  score vae gmm --latent-density gmm
  score vae two_stage --latent-density two-stage
  for run in $runs; do
    cp "${RUNS_DIR:-runs}/samples/$dataset/$run/eval.jsonl" "experiments/results/samples/$dataset/$run/"
  done
done
