#!/usr/bin/env bash
# Frey faces (28x20 grey levels, 8-bit; split 1,565 / 200 / 200 by vae_jax's seeded permutation, see docs/api.md#data)
# with Tomczak & Welling's one-layer VAE (the `vampprior` preset: z = 40, gated MLPs 300-300, KL warm-up over 100
# epochs) and PixelCNN++'s discretized logistic mixture of 10 components per pixel as p(x|z): with the standard
# prior (frey_faces_vae) and with the VampPrior of 500 pseudo-inputs (frey_faces_vampprior). Up to 300 epochs, early
# stopped after 50 without a better validation NELBO; test NLL with K = 5000 (all 200 test faces).
# Outputs: experiments/results/frey_faces_{vae,vampprior}/. Usage: bash experiments/frey_faces.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export MANUAL_DIR=${FREY_DIR:-../shared/data/frey_faces}
common=(--dataset frey_faces --epochs 300 patience=50 model.likelihood=logistic_mixture)
bash experiments/train_and_eval.sh frey_faces_vae vampprior "${common[@]}" model.prior=normal
bash experiments/train_and_eval.sh frey_faces_vampprior vampprior "${common[@]}"
