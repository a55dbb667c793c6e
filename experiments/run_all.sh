#!/usr/bin/env bash
# Every result that the README and docs/ quote, from scratch (many hours on a 2-core CPU; each step resumes).
# Usage: bash experiments/run_all.sh     (MANUAL_DIR, DATA_DIR as in train_and_eval.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
MANUAL_DIR=${MANUAL_DIR:-../shared/data/binarized_mnist}
bash experiments/train_and_eval.sh cs236 cs236 --epochs 40
# cs236's best epoch on the validation split too (docs/results.md's validation table; amortization.py copies the line)
python -m vae_jax eval --workdir "${RUNS_DIR:-runs}/cs236" --split validation \
  --data-dir "${DATA_DIR:-${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}}" > /dev/null
bash experiments/train_and_eval.sh default default
bash experiments/train_and_eval.sh cs236_bfloat16 cs236 --epochs 40 model.compute_dtype=bfloat16
bash experiments/train_and_eval.sh default_vampprior default model.prior=vamp model.prior_components=500
MANUAL_DIR=${FASHION_DIR:-../shared/data/fashion_mnist} bash experiments/train_and_eval.sh fashion_mnist_default \
  default --dataset fashion_mnist
MANUAL_DIR=${FASHION_DIR:-../shared/data/fashion_mnist} bash experiments/train_and_eval.sh \
  fashion_mnist_default_vampprior default --dataset fashion_mnist model.prior=vamp model.prior_components=500
bash experiments/tomczak_welling.sh
bash experiments/tomczak_welling_protocol.sh
bash experiments/tomczak_welling_variants.sh
python experiments/custom_model.py --manual-dir "$MANUAL_DIR"
python experiments/benchmark.py --manual-dir "$MANUAL_DIR"
python experiments/profile_cpu.py --manual-dir "$MANUAL_DIR"
bash experiments/latent_size.sh
bash experiments/kl_weight.sh
bash experiments/objectives_priors.sh
bash experiments/binarization.sh
bash experiments/architecture.sh
bash experiments/datasets.sh
bash experiments/frey_faces.sh
bash experiments/sequences.sh
python experiments/sequence_report.py
python experiments/piano_rolls.py
bash experiments/nll_k5000.sh binarization/dynamic
python experiments/amortization.py --runs cs236 default
python experiments/time_to_result.py --manual-dir "$MANUAL_DIR"
python experiments/target_curve.py
python -m vae_jax compare experiments/results > experiments/results/tables.md
