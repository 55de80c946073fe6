#!/usr/bin/env bash
# Runs one kardia-jax command on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_run.sh --tpu NAME --zone ZONE [--project P] [--workers N]
#       [--setup] [--dry-run] -- kardia-jax pipeline --config configs/... --workdir gs://...
#
# What it does, in order:
#   1. packs the current commit (`git archive HEAD`, so every worker runs exactly the
#      same code, uncommitted edits excluded) and copies it to all workers;
#   2. with --setup, creates a virtual environment on every worker and installs
#      jax[tpu] and the project (once per pod; later runs reuse it);
#   3. starts the command on every worker at the same time, one ssh per worker, with
#      KARDIA_JAX_DISTRIBUTED=1 so each process calls jax.distributed.initialize()
#      (on TPU VMs it reads the coordinator and its own index from the metadata
#      server); each worker's output goes to logs/<tpu>/worker-<i>.log here;
#   4. waits for all workers; if one fails, the others are stopped, because a
#      multi-host JAX program cannot continue with a host missing.
#
# --dry-run prints the commands instead of running them (--workers is then required
# when gcloud cannot be asked). The workdir must be one folder every worker sees
# (a gcsfuse mount of a bucket, or NFS): every host writes its checkpoint shards
# there and all of them read the same run back on resume.
set -euo pipefail

usage() {
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# In a dry run each command is printed as one line a shell can run again: plain
# words as they are, anything else single-quoted.
show() {
  local a out=()
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=("$a"); else out+=("${a@Q}"); fi
  done
  echo "${out[*]}"
}

TPU="" ZONE="" PROJECT="" WORKERS="" SETUP=0 DRY_RUN=0
REMOTE_DIR="kardia-jax"
VENV="kardia-venv"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="${2:?--tpu needs a name}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a zone}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a project id}"; shift 2 ;;
    --workers) WORKERS="${2:?--workers needs a count}"; shift 2 ;;
    --setup) SETUP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) echo "tpu_run.sh: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
done
[[ -n "$TPU" ]] || { echo "tpu_run.sh: --tpu is required" >&2; usage; }
[[ -n "$ZONE" ]] || { echo "tpu_run.sh: --zone is required" >&2; usage; }
[[ $# -gt 0 ]] || { echo "tpu_run.sh: no command given after --" >&2; usage; }
if [[ "$1" != "kardia-jax" ]]; then
  echo "tpu_run.sh: the command must start with kardia-jax (got '$1')" >&2
  exit 2
fi

GCLOUD=(gcloud compute tpus tpu-vm)
SCOPE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && SCOPE+=(--project="$PROJECT")

if [[ -z "$WORKERS" ]]; then
  if [[ "$DRY_RUN" -eq 1 ]]; then
    echo "tpu_run.sh: --dry-run needs --workers N (gcloud is not asked in a dry run)" >&2
    exit 2
  fi
  # One network endpoint per worker VM.
  WORKERS=$("${GCLOUD[@]}" describe "$TPU" "${SCOPE[@]}" --format='value(networkEndpoints.len())')
fi
if ! [[ "$WORKERS" =~ ^[1-9][0-9]*$ ]]; then
  echo "tpu_run.sh: --workers must be a positive integer (got '$WORKERS')" >&2
  exit 2
fi

# Quote the user's command once, for the remote shell.
USER_CMD=$(show "$@")
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
ARCHIVE="/tmp/kardia-jax-${TPU}.tar.gz"
LOG_DIR="logs/${TPU}"

run() {
  if [[ "$DRY_RUN" -eq 1 ]]; then
    show "$@"
  else
    "$@"
  fi
}

# 1. Code: the committed tree, identical on every worker.
run git -C "$REPO_ROOT" archive --format=tar.gz -o "$ARCHIVE" HEAD
run "${GCLOUD[@]}" scp "$ARCHIVE" "$TPU:/tmp/kardia-jax.tar.gz" "${SCOPE[@]}" --worker=all
UNPACK="rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -xzf /tmp/kardia-jax.tar.gz -C ~/$REMOTE_DIR"
run "${GCLOUD[@]}" ssh "$TPU" "${SCOPE[@]}" --worker=all --command="$UNPACK"

# 2. Environment, once per pod (every worker in parallel through --worker=all).
if [[ "$SETUP" -eq 1 ]]; then
  INSTALL="python3 -m venv ~/$VENV && . ~/$VENV/bin/activate && pip install -q -U pip"
  INSTALL+=" && pip install -q 'jax[tpu]' && pip install -q -e ~/$REMOTE_DIR"
  run "${GCLOUD[@]}" ssh "$TPU" "${SCOPE[@]}" --worker=all --command="$INSTALL"
fi

# 3. The job: one ssh per worker, started together.
REMOTE="cd ~/$REMOTE_DIR && . ~/$VENV/bin/activate && KARDIA_JAX_DISTRIBUTED=1 $USER_CMD"
run mkdir -p "$LOG_DIR"
pids=()
for ((i = 0; i < WORKERS; i++)); do
  cmd=("${GCLOUD[@]}" ssh "$TPU" "${SCOPE[@]}" --worker="$i" --command="$REMOTE")
  if [[ "$DRY_RUN" -eq 1 ]]; then
    run "${cmd[@]}"
  else
    "${cmd[@]}" >"$LOG_DIR/worker-$i.log" 2>&1 &
    pids+=("$!")
  fi
done
[[ "$DRY_RUN" -eq 1 ]] && exit 0

# 4. Wait; one failed worker stops the rest.
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    echo "tpu_run.sh: worker $i failed, see $LOG_DIR/worker-$i.log; stopping the others" >&2
    status=1
    kill "${pids[@]}" 2>/dev/null || true
    "${GCLOUD[@]}" ssh "$TPU" "${SCOPE[@]}" --worker=all \
      --command="pkill -f 'kardia-jax' || true" || true
    break
  fi
done
[[ "$status" -eq 0 ]] && echo "tpu_run.sh: all $WORKERS workers finished; logs in $LOG_DIR"
exit "$status"
