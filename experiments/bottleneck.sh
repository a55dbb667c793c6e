#!/usr/bin/env bash
# The information bottleneck (docs/studies.md, extending study 2): the cs236 VAE on MNIST and Fashion-MNIST,
# binarized dynamically (labelled, so that a linear probe on the posterior means can be scored), with the KL weight
# beta in {0.25, 0.5, 1, 2, 4} at z = 10 and the latent size z in {2, 5, 10, 20, 50, 100} at beta = 1 (z = 10,
# beta = 1 is one run of both sweeps): 10 runs per dataset, EPOCHS epochs each (40 by default, as study 2).
# Each run is evaluated on the whole test split (ELBO, K = IWAE_K NLL, 100 by default) by train_and_eval.sh; then
# bottleneck_report.py adds the rate, distortion, I_q, marginal KL and the linear probe's accuracy
# (vae_jax.bottleneck) and writes experiments/results/bottleneck/<dataset>/{results.csv,results.md,bottleneck.png}.
# Runs: $RUNS_DIR/bottleneck/<dataset>/<run> (RUNS_DIR=runs by default). Resumable: re-running resumes each run
# from its checkpoints; a run trained for EPOCHS and evaluated is skipped.
# Usage: bash experiments/bottleneck.sh [dataset ...]   (default: mnist fashion_mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE_K=${IWAE_K:-100}
epochs=${EPOCHS:-40}
datasets=("${@:-mnist fashion_mnist}")
datasets=(${datasets[@]})
manual() { [ "$1" = mnist ] && echo "${MNIST_DIR:-../shared/data/mnist}" || echo "${FASHION_DIR:-../shared/data/fashion_mnist}"; }
# the shared run first (the VAE that other studies read), then the beta sweep, then the latent sizes
settings=("z10_beta1 model.latent_dim=10 kl_weight=1")
for beta in 0.25 0.5 2 4; do settings+=("z10_beta$beta model.latent_dim=10 kl_weight=$beta"); done
for z in 2 5 20 50 100; do settings+=("z${z}_beta1 model.latent_dim=$z kl_weight=1"); done
for setting in "${settings[@]}"; do
  set -- $setting
  name=$1
  shift
  for dataset in "${datasets[@]}"; do
    metrics=${RUNS_DIR:-runs}/bottleneck/$dataset/$name/metrics.jsonl
    if [ -f "experiments/results/bottleneck/$dataset/$name/eval.jsonl" ] && [ -f "$metrics" ] \
        && [ "$(wc -l < "$metrics")" -ge "$epochs" ]; then
      continue  # trained and evaluated
    fi
    MANUAL_DIR=$(manual "$dataset") bash experiments/train_and_eval.sh "bottleneck/$dataset/$name" cs236 \
      --epochs "$epochs" --dataset "$dataset" "$@"
  done
done
for dataset in "${datasets[@]}"; do
  python experiments/bottleneck_report.py "$dataset" --runs-dir "${RUNS_DIR:-runs}/bottleneck/$dataset" --iwae-k "$IWAE_K"
done
