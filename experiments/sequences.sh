#!/usr/bin/env bash
# The polyphonic-music study (docs/studies.md): the recurrent baseline, the VRNN, the SRNN and the deep Markov model of
# experiments/sequence_models.py (MODELS=, default the first three) on JSB Chorales and Nottingham (DATASETS=), each
# trained on the ELBO (Adam 1e-3, cosine decay, batches of 16 sequences in length buckets; the latent models with a KL
# warm-up over the first WARMUP epochs), its best checkpoint by validation NELBO evaluated on the whole test split: the
# ELBO, the importance-weighted bound with K = IWAE_K (default 100) over whole sequences and, for the latent models, the
# FIVO bound with K = IWAE_K particles, in nats per time step (one eval.jsonl line per bound). Further arguments are
# config overrides for every run, and SUFFIX= tells those runs apart (e.g. SUFFIX=_wd0.1 ... optim.name=adamw
# optim.weight_decay=0.1). Resumable: re-running it continues from the checkpoints in $RUNS_DIR/sequences/. Output:
# experiments/results/sequences/<dataset>_<model><suffix>/{metrics,eval}.jsonl. Usage: bash experiments/sequences.sh
# [override ...]
set -euo pipefail
cd "$(dirname "$0")/.."
polyphonic=${POLYPHONIC_DIR:-../shared/data/polyphonic}
runs="${RUNS_DIR:-runs}/sequences"
for dataset in ${DATASETS:-jsb_chorales nottingham}; do
  case $dataset in
    nottingham) epochs=${EPOCHS:-100} warmup=${WARMUP:-20} patience=${PATIENCE:-20} ;;
    *) epochs=${EPOCHS:-300} warmup=${WARMUP:-50} patience=${PATIENCE:-50} ;;
  esac
  for model in ${MODELS:-rnn vrnn srnn}; do
    name=${dataset}_$model${SUFFIX:-} warm=$warmup
    [ "$model" = rnn ] && warm=0
    python -m vae_jax train --workdir "$runs/$name" --model experiments/sequence_models.py:$model \
      --dataset "$dataset" --manual-dir "$polyphonic" --epochs "$epochs" --no-progress batch_size=16 \
      eval_batch_size=64 kl_warmup_epochs=$warm patience=$patience "$@"
    rm -f "$runs/$name/eval.jsonl"
    for bound in iwae fivo; do  # the baseline has no latents to filter: its bounds are its exact log p(x)
      [ "$model" = rnn ] && [ $bound = fivo ] && continue
      python -m vae_jax eval --workdir "$runs/$name" --model experiments/sequence_models.py:$model --split test \
        --iwae-samples "${IWAE_K:-100}" --bound $bound --manual-dir "$polyphonic" > /dev/null
    done
    mkdir -p "experiments/results/sequences/$name"
    cp "$runs/$name/metrics.jsonl" "$runs/$name/eval.jsonl" "experiments/results/sequences/$name/"
  done
done
