#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create it (or reuse it), copy this checkout to every worker,
# install, clear stale TPU holders, run the same `python -m miras_jax.train` on all workers
# (`gcloud compute tpus tpu-vm ssh --worker=all`), collect per-worker logs; on a spot /
# preemptible slice, re-create it after a preemption and re-launch: the run resumes from the
# newest checkpoint in --workdir.
#
#   scripts/launch_tpu_pod.sh --name=miras-v5e16 --zone=us-west4-a --type=v5litepod-16 \
#       --spot --bucket=my-bucket -- --config=configs/moneta.py:340m \
#       --config.train.mesh.data=1 --config.train.mesh.fsdp=-1 --config.train.grad_accum_steps=2 \
#       --config.data.corpus=/mnt/miras/data/fineweb_edu --config.data.tokenizer=/mnt/miras/tok.model
#
# --git=<url>[@<ref>] has every worker clone the code instead (e.g. a pushed branch).
# Everything after `--` goes to `python -m miras_jax.train`; --workdir defaults to
# /mnt/miras/runs/<name> (the bucket mounted with gcsfuse on every worker). The workdir must be
# one directory every host sees: Orbax commits a checkpoint only after every host wrote its
# shards there (a GCS bucket through gcsfuse, or a Filestore/NFS mount via --workdir).
# Each worker runs `python -m miras_jax.train --distributed=true`, so jax.distributed finds
# the slice from the TPU metadata itself; process 0 alone prints, writes TensorBoard and plots.
# Before launching a long run, check it fits: `python -m miras_jax.aot` with the same config
# and --topology (README, "Cloud TPU pods"). Tested offline against a fake gcloud:
# tests/train/test_launch_tpu_pod.py.
set -euo pipefail

NAME= ZONE= TYPE= PROJECT= BUCKET= WORKDIR= GIT= SPOT=0 RETRIES=20 SKIP_INSTALL=0
VERSION=${TPU_RUNTIME_VERSION:-}
REMOTE_DIR=miras-jax
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2; }
die() { echo "launch_tpu_pod.sh: error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --type=*) TYPE=${1#*=} ;;            # accelerator type, e.g. v5litepod-16, v5p-128, v4-32
    --version=*) VERSION=${1#*=} ;;      # TPU VM runtime (default per generation, below)
    --project=*) PROJECT=${1#*=} ;;
    --bucket=*) BUCKET=${1#*=} ;;        # GCS bucket mounted at /mnt/miras on every worker
    --workdir=*) WORKDIR=${1#*=} ;;
    --git=*) GIT=${1#*=} ;;              # clone <url>[@<ref>] on every worker instead of copying
    --spot) SPOT=1 ;;
    --retries=*) RETRIES=${1#*=} ;;      # re-launches after preemption
    --skip_install) SKIP_INSTALL=1 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) die "unknown option $1 (options before --, training arguments after it)" ;;
  esac
  shift
done
TRAIN_ARGS=("$@")
[[ -n $NAME && -n $ZONE && -n $TYPE ]] || die '--name, --zone and --type are required'
command -v gcloud > /dev/null || die 'gcloud not found on PATH (install the Google Cloud CLI)'
[[ ${#TRAIN_ARGS[@]} -gt 0 ]] || die 'no training arguments after -- (at least --config=...)'
for a in "${TRAIN_ARGS[@]}"; do [[ $a == --workdir=* ]] && die 'give --workdir before --'; done
[[ -n $WORKDIR || -n $BUCKET ]] || die 'give --bucket (mounted on every worker) or a shared --workdir'
WORKDIR=${WORKDIR:-/mnt/miras/runs/$NAME}
if [[ -z $VERSION ]]; then  # Cloud TPU runtime images (cloud.google.com/tpu/docs/runtimes)
  case $TYPE in
    v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no default runtime for --type=$TYPE; pass --version" ;;
  esac
fi
GC=(gcloud compute tpus tpu-vm)
LOC=(--zone="$ZONE")
[[ -n $PROJECT ]] && LOC+=(--project="$PROJECT")
LOGS=logs/$NAME
mkdir -p "$LOGS"

state() { "${GC[@]}" describe "$NAME" "${LOC[@]}" --format='value(state)' 2>/dev/null || true; }
workers() { "${GC[@]}" describe "$NAME" "${LOC[@]}" --format='value(networkEndpoints[].ipAddress)' | tr ';,' '\n\n' | grep -c .; }
on_all() { "${GC[@]}" ssh "$NAME" "${LOC[@]}" --worker=all --command="$1"; }

create_or_reuse() {
  local s; s=$(state)
  if [[ $s == READY ]]; then echo "reusing $NAME ($TYPE, READY)"; return; fi
  if [[ -n $s ]]; then  # PREEMPTED / TERMINATED / ...: a spot slice does not come back by itself
    echo "$NAME is $s: deleting and re-creating it"
    "${GC[@]}" delete "$NAME" "${LOC[@]}" --quiet
  fi
  local extra=(); [[ $SPOT == 1 ]] && extra+=(--spot)
  "${GC[@]}" create "$NAME" "${LOC[@]}" --accelerator-type="$TYPE" --version="$VERSION" "${extra[@]}"
}

install() {
  local fetch
  if [[ -n $GIT ]]; then  # every worker pulls the same commit
    local url=$GIT ref=  # <url>@<ref>: a branch or tag after the last @ (no ':' or '/' in it)
    if [[ $GIT == *@* && ${GIT##*@} != *[:/]* ]]; then url=${GIT%@*} ref=${GIT##*@}; fi
    fetch="git clone --quiet ${ref:+--branch=$(printf %q "$ref")} $(printf %q "$url") $REMOTE_DIR"
  else  # copy this checkout's committed code
    local tgz; tgz=$(mktemp -t miras-XXXX.tgz)
    git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$tgz" HEAD
    "${GC[@]}" scp "$tgz" "$NAME:miras-jax.tgz" "${LOC[@]}" --worker=all
    rm -f "$tgz"
    fetch="mkdir $REMOTE_DIR && tar xzf miras-jax.tgz -C $REMOTE_DIR"
  fi
  on_all "set -e; rm -rf $REMOTE_DIR && $fetch
    cd $REMOTE_DIR && python3 -m venv ~/venv && ~/venv/bin/pip -q install -U pip
    ~/venv/bin/pip -q install -e '.[tpu]'"
  if [[ -n $BUCKET ]]; then
    on_all "set -e; sudo mkdir -p /mnt/miras; mountpoint -q /mnt/miras || \
      sudo gcsfuse --implicit-dirs -o allow_other --file-mode=666 --dir-mode=777 $BUCKET /mnt/miras"
  fi
}

# Processes left from an earlier launch keep the TPU (/dev/accel* on v4, /dev/vfio/* on v5+)
# and libtpu's lock file; a new run would fail with "TPU in use".
clear_tpu() {
  on_all "pids=\$(sudo lsof -t -w /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | sort -u); \
    [ -n \"\$pids\" ] && sudo kill -9 \$pids; sudo rm -f /tmp/libtpu_lockfile; true"
}

collect_logs() {
  local n i; n=$(workers 2>/dev/null || echo 0)
  for ((i = 0; i < n; i++)); do
    "${GC[@]}" scp "$NAME:miras-train.log" "$LOGS/worker-$i.log" "${LOC[@]}" --worker="$i" || true
  done
  echo "logs: $LOGS/worker-*.log"
}

run() {
  local q; q=$(printf '%q ' "${TRAIN_ARGS[@]}")
  # Every worker runs the same command; jax.distributed.initialize() discovers the slice.
  on_all "cd $REMOTE_DIR && ~/venv/bin/python -m miras_jax.train --distributed=true \
    --workdir=$WORKDIR $q > ~/miras-train.log 2>&1; rc=\$?; tail -n 3 ~/miras-train.log; exit \$rc"
}

attempt=0
while true; do
  create_or_reuse
  if [[ $SKIP_INSTALL == 0 || $attempt -gt 0 ]]; then install; fi
  clear_tpu
  set +e; run; rc=$?; set -e
  collect_logs
  preempted=0
  grep -q 'preempted (SIGTERM)' "$LOGS/worker-0.log" 2>/dev/null && preempted=1
  [[ $(state) != READY ]] && preempted=1
  if [[ $preempted == 0 ]]; then
    [[ $rc == 0 ]] && echo "done: $WORKDIR" || echo "training failed (rc=$rc); see $LOGS" >&2
    exit "$rc"
  fi
  attempt=$((attempt + 1))
  if [[ $SPOT == 0 || $attempt -gt $RETRIES ]]; then
    echo "preempted; not re-launching (spot=$SPOT, attempt $attempt of $RETRIES)" >&2
    exit 1
  fi
  echo "preempted: re-launching (attempt $attempt of $RETRIES); the run resumes from $WORKDIR"
done
