#!/usr/bin/env bash
# Study 1 of issue #3: the latent size. Trains the cs236 architecture (MLPs 300-300, Adam 1e-3, 40 epochs) with
# z in {2, 5, 10, 20, 50, 100} and evaluates each on the whole test split: NELBO, reconstruction, KL, active units
# and the NLL with K = IWAE_K importance samples (1000 by default, to fit the study into a CPU session; the
# README's main table uses K = 5000). Outputs: experiments/results/latent_size/. Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE_K=${IWAE_K:-1000}
for z in 2 5 10 20 50 100; do
  bash experiments/train_and_eval.sh "latent_size/z$z" cs236 --epochs 40 "model.latent_dim=$z"
done
python experiments/study_report.py latent_size
