#!/usr/bin/env bash
# The study of docs/studies.md, "One model, four kinds of data": the CS236 VAE (z = 10, MLPs 300-300, 40 epochs) on
# static binarized MNIST, on MNIST and Fashion-MNIST binarized dynamically, and on the grey levels of MNIST and
# Fashion-MNIST as they are (8 bits, PixelCNN++'s discretized logistic mixture of 10 components per pixel as p(x|z),
# the encoder seeing x / 255). Each evaluated on its whole test split, NLL with K = 100.
# Outputs: experiments/results/datasets/<run>/ and results.{csv,md}, datasets.png (study_report.py).
# Usage: bash experiments/datasets.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE_K=${IWAE_K:-100}
mnist=${MNIST_DIR:-../shared/data/mnist} fashion=${FASHION_DIR:-../shared/data/fashion_mnist}
eight_bit=(data_form=8bit model.likelihood=logistic_mixture)
MANUAL_DIR=${STATIC_DIR:-../shared/data/binarized_mnist} \
  bash experiments/train_and_eval.sh datasets/binarized_mnist cs236 --epochs 40 --dataset binarized_mnist
MANUAL_DIR=$mnist bash experiments/train_and_eval.sh datasets/mnist_dynamic cs236 --epochs 40 --dataset mnist
MANUAL_DIR=$fashion bash experiments/train_and_eval.sh datasets/fashion_mnist_dynamic cs236 --epochs 40 \
  --dataset fashion_mnist
MANUAL_DIR=$mnist bash experiments/train_and_eval.sh datasets/mnist_8bit cs236 --epochs 40 --dataset mnist \
  "${eight_bit[@]}"
MANUAL_DIR=$fashion bash experiments/train_and_eval.sh datasets/fashion_mnist_8bit cs236 --epochs 40 \
  --dataset fashion_mnist "${eight_bit[@]}"
python experiments/study_report.py datasets --iwae-k "$IWAE_K"
