#!/usr/bin/env bash
# Tomczak & Welling's own training protocol for their two-layer HVAE with the VampPrior, where the preset
# `hvae_vampprior` has a cosine schedule over 200 epochs: AdamNormGrad at a constant 5e-4, the KL warmed up over 100
# epochs, early stopping once 50 epochs after the warm-up bring no lower validation NELBO, at most 2,000 epochs, and
# their code's network details (He initialization, log-variances clipped to [-6, 2]). Then evaluated on the whole
# test split (NELBO and the K = 5000 NLL) and sampled.
# The same protocol on the preset's networks (Glorot initialization, no clip) was run beside it once and dropped: it
# had flattened at a validation NELBO of 91.9 by epoch 236, where this run was at 91.7 and still improving.
# Then a decay phase of our own: the early-stopped run's best checkpoint trained on for 50 epochs with the learning
# rate decaying (cosine) from 5e-4 to 1e-5, the KL weight at 1, its last epoch evaluated (fixed before it ran).
# And an averaging phase instead (Polyak averaging): the same checkpoint trained on for 60 epochs at a constant 5e-4,
# the KL weight at 1, validated and evaluated on the moving average of its parameters (`optim.ema_decay=0.9999`, a
# horizon of 10,000 steps), the epoch of the best validation NELBO evaluated; and the same at a constant 1e-3, which
# was better on validation from its first epoch (its test evaluation was decided after that); and that run trained
# on to 120 epochs, because its validation NELBO was still falling at epoch 60 (its best epoch evaluated again).
# And the 1e-3 averaging with a decoupled weight decay of 0.05 (`optim.weight_decay=0.05`: AdamW's step on the
# normalized gradient, every parameter decayed), at most 120 epochs with patience 15, its best validation epoch
# evaluated: the decay chosen on validation among 0.01, 0.03, 0.05, 0.1 and 0.3 (`tomczak_welling_variants.sh`).
# Outputs: experiments/results/hvae_vampprior_authors{,_decay,_ema,_ema_lr1e-3,_ema_lr1e-3_e120,_ema_lr1e-3_wd0.05}/,
# the logs in runs/.
# Resumable: re-run to continue (a run that stopped early stays stopped; `in_flight.sh` carries one to a new
# machine). A median 23 s per epoch on a 2-core Xeon with AVX-512 (the first run: 304 epochs in 7,966 s),
# 40 s on a 2-core EPYC with AVX2; each K = 5000 evaluation 25 minutes more on the Xeon (70 on the EPYC).
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_FLAGS="${XLA_FLAGS:---xla_cpu_experimental_ynn_fusion_type=}"  # see tomczak_welling.sh
runs="${RUNS_DIR:-runs}"
mkdir -p "$runs"
source experiments/tomczak_welling_options.sh
step() {  # NAME [train options and overrides ...]: train_and_eval.sh with the authors' details, logged to runs/NAME.log
  local name=$1
  shift
  bash experiments/train_and_eval.sh "$name" hvae_vampprior "${authors[@]}" "$@" >> "$runs/$name.log" 2>&1
}
step hvae_vampprior_authors --epochs 2000 optim.learning_rate=5e-4 optim.schedule=constant patience=50
EVAL_EPOCH=50 step hvae_vampprior_authors_decay --epochs 50 "${decay[@]}" init_from="$runs/hvae_vampprior_authors"
EVAL_EPOCH= step hvae_vampprior_authors_ema --epochs 60 "${ema[@]}" init_from="$runs/hvae_vampprior_authors"
averaging_at_1e3=("${ema[@]}" optim.learning_rate=1e-3 init_from="$runs/hvae_vampprior_authors")
EVAL_EPOCH= step hvae_vampprior_authors_ema_lr1e-3 --epochs 60 "${averaging_at_1e3[@]}"
# The 120-epoch run resumes a copy of the 60-epoch one's work directory (resuming is bit-exact) rather than redoing it.
[ -d "$runs/hvae_vampprior_authors_ema_lr1e-3_e120" ] || cp -r \
  "$runs/hvae_vampprior_authors_ema_lr1e-3" "$runs/hvae_vampprior_authors_ema_lr1e-3_e120"
EVAL_EPOCH= step hvae_vampprior_authors_ema_lr1e-3_e120 --epochs 120 "${averaging_at_1e3[@]}"
EVAL_EPOCH= step hvae_vampprior_authors_ema_lr1e-3_wd0.05 --epochs 120 "${averaging_at_1e3[@]}" \
  optim.weight_decay=0.05 patience=15
