#!/usr/bin/env bash
# Carries an unfinished run from one session to the next where a new session's machine holds only what is committed
# (runs/ is not). `save NAME` packs $RUNS_DIR/NAME's metrics.jsonl and its latest and best checkpoints into
# experiments/in_flight/NAME.tar (commit it); `restore NAME` unpacks that into $RUNS_DIR/NAME, from where the run's
# own command resumes it exactly (the checkpoint holds the optimizer state and the run's key). Stop the run before
# `save`. When the run has finished and its results are committed, delete its tar.
# Usage: bash experiments/in_flight.sh save|restore NAME
set -euo pipefail
cd "$(dirname "$0")/.."
action=$1 name=$2
runs=${RUNS_DIR:-runs}
tar_file="experiments/in_flight/$name.tar"
case "$action" in
  save)
    test -f "$runs/$name/metrics.jsonl" || { echo "error: no run in $runs/$name" >&2; exit 2; }
    read -r latest best < <(python -c "import sys; from vae_jax.checkpoint import Checkpointer
c = Checkpointer(sys.argv[1]); print(c.epochs()[-1], c.best_epoch())" "$runs/$name")
    mkdir -p experiments/in_flight
    tar -cf "$tar_file" -C "$runs" "$name/metrics.jsonl" $(printf "$name/checkpoints/%s\n" $latest $best | sort -u)
    echo "$tar_file: epoch $latest (latest) and $best (best)" ;;
  restore)
    test -f "$tar_file" || { echo "error: no $tar_file to restore" >&2; exit 2; }
    test ! -e "$runs/$name" || { echo "error: $runs/$name exists; resume it instead" >&2; exit 2; }
    mkdir -p "$runs"
    tar -xf "$tar_file" -C "$runs"
    echo "restored $runs/$name" ;;
  *) echo "usage: bash experiments/in_flight.sh save|restore NAME" >&2; exit 2 ;;
esac
