#!/usr/bin/env bash
# Study 3 of issue #3: objectives and priors at the same architecture and budget. The cs236 model (MLPs 300-300,
# z = 10, Adam 1e-3, batch 100, 40 epochs) trained as a standard VAE, as an IWAE with K = 5 and K = 50, with the
# learned mixture-of-Gaussians prior (GMVAE, 500 components) and with the VampPrior (500 pseudo-inputs); each is
# evaluated on the whole test split (NELBO and the K = IWAE_K NLL, 1000 by default).
# Outputs: experiments/results/objectives_priors/. Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE_K=${IWAE_K:-1000}
run() { bash experiments/train_and_eval.sh "objectives_priors/$1" cs236 --epochs 40 "${@:2}"; }
run vae
run iwae_k5 objective=iwae num_samples=5
run gmvae model.prior=mixture model.prior_components=500
run vampprior model.prior=vamp model.prior_components=500
run iwae_k50 objective=iwae num_samples=50
python experiments/study_report.py objectives_priors
