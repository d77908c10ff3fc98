#!/usr/bin/env bash
# Cloud TPU VM lifecycle for jaxssl: create, copy + install, pretrain on all
# workers, linear evaluation on all workers, export, tail logs, delete. Every
# step is one gcloud command; --dry-run prints them instead of running them.
#
#   tools/tpu_vm.sh [--dry-run] --project=P --zone=Z --name=N \
#       [--accelerator=v4-32] [--version=tpu-ubuntu2204-base] \
#       [--config=configs/simclr_resnet50.py] [--workdir=gs://BUCKET/run] \
#       [--args="--config.data.data_dir=gs://BUCKET/tensorflow_datasets"] \
#       [--linear_config=configs/linear_eval.py] [--linear_args="..."] \
#       create|setup|run|linear|export|logs|delete|all
#
# `run` starts `python -m jaxssl.main --distributed` on every worker (the TPU
# runtime tells jax.distributed its peers), in the background, logging to
# ~/jaxssl.log; re-running it after a preemption resumes from the latest
# checkpoint in --workdir (use a gs:// bucket so every host sees it).
# `linear` (after pretraining) starts `python -m jaxssl.linear_eval
# --distributed` of the pretrained --workdir the same way, into
# --workdir/linear_eval, logging to ~/jaxssl_linear.log (it resumes too).
# `export` writes the encoder's PyTorch weights to --workdir/export/encoder.*
# from worker 0 (tools/export_encoder.py).
set -euo pipefail

DRY_RUN=0
PROJECT="" ZONE="" NAME="" ACCELERATOR="v4-32" VERSION="tpu-ubuntu2204-base"
CONFIG="configs/simclr_resnet50.py" WORKDIR="" ARGS=""
LINEAR_CONFIG="configs/linear_eval.py" LINEAR_ARGS=""
COMMANDS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --project=*) PROJECT="${arg#*=}" ;;
    --zone=*) ZONE="${arg#*=}" ;;
    --name=*) NAME="${arg#*=}" ;;
    --accelerator=*) ACCELERATOR="${arg#*=}" ;;
    --version=*) VERSION="${arg#*=}" ;;
    --config=*) CONFIG="${arg#*=}" ;;
    --workdir=*) WORKDIR="${arg#*=}" ;;
    --args=*) ARGS="${arg#*=}" ;;
    --linear_config=*) LINEAR_CONFIG="${arg#*=}" ;;
    --linear_args=*) LINEAR_ARGS="${arg#*=}" ;;
    create|setup|run|linear|export|logs|delete|all) COMMANDS+=("$arg") ;;
    *) echo "tpu_vm.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done
if [[ ${#COMMANDS[@]} -eq 0 ]]; then
  echo "tpu_vm.sh: name a command:" \
    "create|setup|run|linear|export|logs|delete|all" >&2; exit 2
fi
for required in PROJECT ZONE NAME; do
  if [[ -z "${!required}" ]]; then
    echo "tpu_vm.sh: --$(echo "$required" | tr 'A-Z' 'a-z')=... is required" >&2
    exit 2
  fi
done

TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE" --project="$PROJECT")

step() {  # prints the command; runs it unless --dry-run
  printf '%q ' "$@"; printf '\n'
  if [[ $DRY_RUN -eq 0 ]]; then "$@"; fi
}

on_all_workers() {
  step "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"
}

create() {
  step "${TPU[@]}" create "$NAME" "${WHERE[@]}" \
    --accelerator-type="$ACCELERATOR" --version="$VERSION"
}

setup() {  # the committed tree (git archive: no .venv, no workdirs)
  local repo archive
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  archive="${TMPDIR:-/tmp}/jaxssl-src.tar.gz"
  step git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
  step "${TPU[@]}" scp "$archive" "$NAME:~/jaxssl-src.tar.gz" "${WHERE[@]}" \
    --worker=all
  on_all_workers "mkdir -p ~/jaxssl && tar xzf ~/jaxssl-src.tar.gz -C ~/jaxssl \
&& cd ~/jaxssl && python3 -m pip install -q -e . 'jax[tpu]'"
}

need_workdir() {
  if [[ -z "$WORKDIR" ]]; then
    echo "tpu_vm.sh: $1 needs --workdir=gs://... (shared by all hosts)" >&2
    exit 2
  fi
}

run() {
  need_workdir run
  on_all_workers "cd ~/jaxssl && nohup python3 -m jaxssl.main --distributed \
--config=$CONFIG --workdir=$WORKDIR $ARGS > ~/jaxssl.log 2>&1 &"
}

linear() {
  need_workdir linear
  on_all_workers "cd ~/jaxssl && nohup python3 -m jaxssl.linear_eval \
--distributed --config=$LINEAR_CONFIG --config.checkpoint=$WORKDIR \
--workdir=$WORKDIR/linear_eval $LINEAR_ARGS > ~/jaxssl_linear.log 2>&1 &"
}

export_encoder() {
  need_workdir export
  step "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 \
    --command="cd ~/jaxssl && python3 tools/export_encoder.py \
--checkpoint=$WORKDIR --out=$WORKDIR/export/encoder"
}

logs() {  # the newest log: pretraining's or linear evaluation's
  step "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=0 \
    --command="tail -n 100 -f \$(ls -t ~/jaxssl*.log | head -n 1)"
}

delete() {
  step "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
}

for command in "${COMMANDS[@]}"; do
  if [[ "$command" == all ]]; then
    create; setup; run
  elif [[ "$command" == export ]]; then
    export_encoder
  else
    "$command"
  fi
done
