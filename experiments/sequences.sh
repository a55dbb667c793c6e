#!/usr/bin/env bash
# The polyphonic-music study (docs/studies.md): the recurrent baseline, the VRNN and the SRNN of
# experiments/sequence_models.py on JSB Chorales and Nottingham, each trained on the ELBO (Adam 1e-3, cosine decay,
# batches of 16 sequences in length buckets; the latent models with a KL warm-up over the first WARMUP epochs), its
# best checkpoint by validation NELBO evaluated on the whole test split: the ELBO and the importance-weighted bound
# with K = IWAE_K (default 100) over whole sequences, in nats per time step.
# Resumable: re-running it continues from the checkpoints in $RUNS_DIR/sequences/.
# Output: experiments/results/sequences/<dataset>_<model>/{metrics,eval}.jsonl. Usage: bash experiments/sequences.sh
set -euo pipefail
cd "$(dirname "$0")/.."
polyphonic=${POLYPHONIC_DIR:-../shared/data/polyphonic}
runs="${RUNS_DIR:-runs}/sequences"
for dataset in ${DATASETS:-jsb_chorales nottingham}; do
  case $dataset in
    jsb_chorales) epochs=${EPOCHS:-300} warmup=${WARMUP:-50} patience=${PATIENCE:-50} ;;
    *) epochs=${EPOCHS:-100} warmup=${WARMUP:-20} patience=${PATIENCE:-20} ;;
  esac
  for model in rnn vrnn srnn; do
    name=${dataset}_$model warm=$warmup
    [ "$model" = rnn ] && warm=0
    python -m vae_jax train --workdir "$runs/$name" --model experiments/sequence_models.py:$model \
      --dataset "$dataset" --manual-dir "$polyphonic" --epochs "$epochs" --no-progress batch_size=16 \
      eval_batch_size=64 kl_warmup_epochs=$warm patience=$patience
    rm -f "$runs/$name/eval.jsonl"
    python -m vae_jax eval --workdir "$runs/$name" --model experiments/sequence_models.py:$model --split test \
      --iwae-samples "${IWAE_K:-100}" --manual-dir "$polyphonic" > /dev/null
    mkdir -p "experiments/results/sequences/$name"
    cp "$runs/$name/metrics.jsonl" "$runs/$name/eval.jsonl" "experiments/results/sequences/$name/"
  done
done
