#!/usr/bin/env bash
# Study 2 of issue #3: the KL term as a regularizer. Trains the cs236 preset (z = 10, 40 epochs) with the KL weight
# beta in {0.25, 0.5, 1, 2, 4} and evaluates each on the whole test split (rate = KL, distortion = reconstruction
# loss, the ELBO with beta = 1 and the K = IWAE_K NLL, 1000 by default). Outputs: experiments/results/kl_weight/
# (per run: sample grids; the study: results.csv and the rate-distortion plot). Resumable.
set -euo pipefail
cd "$(dirname "$0")/.."
export IWAE_K=${IWAE_K:-1000}
for beta in 0.25 0.5 1 2 4; do
  bash experiments/train_and_eval.sh "kl_weight/beta$beta" cs236 --epochs 40 "kl_weight=$beta"
done
python experiments/study_report.py kl_weight
