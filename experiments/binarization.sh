#!/usr/bin/env bash
# Study 4 of issue #3: static against dynamic binarization. Trains the cs236 preset (40 epochs) on
# `binarized_mnist` (one fixed binarization, Larochelle & Murray) and on `mnist` (a fresh Bernoulli draw of every
# pixel each time an example is used), and evaluates each on its own test split (K = IWAE_K, 1000 by default).
# Environment: STATIC_DIR, DYNAMIC_DIR (the two datasets' original files). Outputs: experiments/results/binarization/.
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE_K=${IWAE_K:-1000}
MANUAL_DIR=${STATIC_DIR:-../shared/data/binarized_mnist} \
  bash experiments/train_and_eval.sh binarization/static cs236 --epochs 40 dataset=binarized_mnist
MANUAL_DIR=${DYNAMIC_DIR:-../shared/data/mnist} \
  bash experiments/train_and_eval.sh binarization/dynamic cs236 --epochs 40 dataset=mnist
python experiments/study_report.py binarization
