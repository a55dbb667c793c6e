#!/usr/bin/env bash
# Fashion-MNIST at 8 bits (grey levels 0..255 as they are) with the `default` VAE (z = 32, MLPs 512-512, Adam 1e-3
# with cosine decay over EPOCHS epochs: 100 by default, the recipe's; the committed runs took 50, which fit a 2-core CPU
# session) and the same VAE with a VampPrior of 500 pseudo-inputs, p(x|z) PixelCNN++'s
# discretized logistic mixture of 10 components per pixel (the encoder sees x / 255): the 8-bit counterparts of
# fashion_mnist_default and fashion_mnist_default_vampprior (docs/results.md). Test NLL with K = IWAE_K (default
# 100 here: K = 5000 through a 512 -> 23,520 output layer takes hours on a CPU), in nats and bits per dimension.
# Resumable: re-running it continues from the checkpoints in $RUNS_DIR/fashion_mnist_8bit_*.
# Output: experiments/results/fashion_mnist_8bit_{default,vampprior}/. Usage: bash experiments/fashion_mnist_8bit.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE_K=${IWAE_K:-100} MANUAL_DIR=${FASHION_DIR:-../shared/data/fashion_mnist}
eight_bit=(--dataset fashion_mnist --epochs "${EPOCHS:-100}" data_form=8bit model.likelihood=logistic_mixture)
bash experiments/train_and_eval.sh fashion_mnist_8bit_default default "${eight_bit[@]}"
bash experiments/train_and_eval.sh fashion_mnist_8bit_vampprior default "${eight_bit[@]}" model.prior=vamp \
  model.prior_components=500
