#!/usr/bin/env bash
# Study 1 of issue #3: the latent size. Trains the cs236 architecture (MLPs 300-300, Adam 1e-3, 40 epochs) with
# z in {2, 5, 10, 20, 50, 100} and evaluates each on the whole test split (NELBO, rec, KL, K = 5000 NLL,
# active units). Outputs: experiments/results/latent_size/z<Z>/. Resumable; about 45 minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
for z in 2 5 10 20 50 100; do
  bash experiments/train_and_eval.sh "latent_size/z$z" cs236 --epochs 40 "model.latent_dim=$z"
done
python -m vae_jax compare experiments/results/latent_size > experiments/results/latent_size/tables.md
