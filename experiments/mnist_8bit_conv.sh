#!/usr/bin/env bash
# MNIST at 8 bits (grey levels 0..255 as they are) with a convolutional VAE and PixelCNN++'s discretized logistic
# mixture of 10 components per pixel as p(x|z): the `default` recipe (z = 32, dense 512-512 after 3x3 stride-2
# convolutions of 32 and 64 channels, Adam 1e-3 with cosine decay over EPOCHS epochs, 100 by default), test NLL with
# K = IWAE_K (5000 by default) in bits per dimension, to set beside the flows' figures on dequantized MNIST
# (docs/results.md). Its last transposed convolution has 30 output channels at 28x28: an epoch took 111-139 s on a
# 2-core CPU beside another run, so the committed run took EPOCHS=20 IWAE_K=100; the recipe is sized for a GPU.
# Resumable: re-running it continues from the checkpoints in $RUNS_DIR/mnist_8bit_conv.
# Output: experiments/results/mnist_8bit_conv/. Usage: bash experiments/mnist_8bit_conv.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MANUAL_DIR=${MNIST_DIR:-../shared/data/mnist} bash experiments/train_and_eval.sh mnist_8bit_conv default \
  --dataset mnist --epochs "${EPOCHS:-100}" data_form=8bit model.likelihood=logistic_mixture model.architecture=conv
