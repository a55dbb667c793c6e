#!/usr/bin/env bash
# Tomczak & Welling's own training protocol for their two-layer HVAE with the VampPrior, where the preset
# `hvae_vampprior` has a cosine schedule over 200 epochs: AdamNormGrad at a constant 5e-4, the KL warmed up over 100
# epochs, early stopping once 50 epochs after the warm-up bring no lower validation NELBO, at most 2,000 epochs.
# Two runs side by side: `hvae_vampprior_adamnormgrad` (that protocol on the preset's networks) and
# `hvae_vampprior_authors` (also their code's network details: He initialization, log-variances clipped to [-6, 2]).
# Each is then evaluated on the whole test split (NELBO and the K = 5000 NLL) and sampled.
# Outputs: experiments/results/{hvae_vampprior_adamnormgrad,hvae_vampprior_authors}/, logs in runs/. Resumable:
# re-run to continue (a run that stopped early stays stopped). Days on a 2-core CPU (about 40 s per epoch alone).
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_cpu_experimental_ynn_fusion_type=}"  # see tomczak_welling.sh
mkdir -p "${RUNS_DIR:-runs}"
protocol=(--epochs 2000 optim.name=adam_normgrad optim.learning_rate=5e-4 optim.schedule=constant patience=50)
bash experiments/train_and_eval.sh hvae_vampprior_adamnormgrad hvae_vampprior "${protocol[@]}" \
  >> "${RUNS_DIR:-runs}/hvae_vampprior_adamnormgrad.log" 2>&1 &
bash experiments/train_and_eval.sh hvae_vampprior_authors hvae_vampprior "${protocol[@]}" model.kernel_init=he_normal \
  model.logvar_bound=0 model.logvar_clip=-6,2 >> "${RUNS_DIR:-runs}/hvae_vampprior_authors.log" 2>&1 &
wait
