#!/usr/bin/env bash
# The convolutional encoder/decoder against the MLP at the cs236 sizes (z = 10, dense layers 300-300; the conv
# model puts 3x3 stride-2 convolutions with 32 and 64 channels before them, and transposed ones after the
# decoder's), both trained for EPOCHS epochs (2 by default: a conv epoch costs tens of MLP epochs on a 2-core
# CPU) and evaluated on the whole test split with K = IWAE_K (100 by default).
# Outputs: experiments/results/architecture/. Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE_K=${IWAE_K:-100}
EPOCHS=${EPOCHS:-2}
bash experiments/train_and_eval.sh architecture/mlp cs236 --epochs "$EPOCHS"
bash experiments/train_and_eval.sh architecture/conv cs236 --epochs "$EPOCHS" model.architecture=conv
python experiments/study_report.py architecture
