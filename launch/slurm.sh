#!/usr/bin/env bash
#SBATCH --job-name=sde-jax
# Runs a command as one JAX job over the nodes of a SLURM allocation: one process per GPU, or
# one per node seeing all its GPUs with --per-node.
#
#   sbatch --nodes=2 --gpus-per-node=8 launch/slurm.sh [--per-node] [--port P] \
#       -- sde-jax train --config CONFIG --workdir DIR [--config.a.b=v ...]
#   launch/slurm.sh --dry-run [--gpus-per-node G] [--nodes N] -- COMMAND ...   (inside salloc)
#
# srun starts the processes; each exports JAX_COORDINATOR_ADDRESS (first node of the job, port P,
# default 61440 + job id mod 4096), JAX_NUM_PROCESSES=$SLURM_NTASKS, JAX_PROCESS_ID=$SLURM_PROCID
# and JAX_LOCAL_DEVICE_IDS (its GPU, or all GPUs of the node), which sde_jax.parallel.initialize
# and jax.distributed.initialize read. Each task must see all GPUs of its node (srun's default;
# a single bound GPU is also recognised). --dry-run prints the srun command and runs nothing.
# See docs/launch.md.
set -euo pipefail

usage() { sed -n '3,8p' "$0" | sed 's/^# \{0,1\}//' >&2; }
die() { echo "launch/slurm.sh: $*" >&2; usage; exit 2; }

# sbatch runs a copy of this file from its spool directory, so the script sources nothing and
# repeats these helpers of tpu_pod.sh.
# Shell-quotes each argument only where needed, so printed commands stay readable.
quote() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("${a@Q}"); fi
  done
  echo "${out[*]}"
}

# First host of a SLURM node list: node7 -> node7, gpu[003-010,012],cpu1 -> gpu003.
first_host() {
  if command -v scontrol > /dev/null; then
    scontrol show hostnames "$1" | head -n 1
    return
  fi
  local first=${1%%,*} rest
  if [[ $first == *'['* ]]; then
    rest=${1#*'['}
    echo "${1%%'['*}${rest%%[],-]*}"
  else
    echo "$first"
  fi
}

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

per_node=0 dry_run=0 port='' gpus='' nodes='' command=()
need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --per-node) per_node=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --port) need "$@"; port=$2; shift 2 ;;
    --port=*) port=${1#*=}; shift ;;
    --gpus-per-node) need "$@"; gpus=$2; shift 2 ;;
    --gpus-per-node=*) gpus=${1#*=}; shift ;;
    --nodes) need "$@"; nodes=$2; shift 2 ;;
    --nodes=*) nodes=${1#*=}; shift ;;
    --) shift; command=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (the command goes after '--')" ;;
  esac
done

[[ ${#command[@]} -gt 0 ]] || die "no command given; put it after '--'"
[[ -n ${SLURM_JOB_ID:-} && -n ${SLURM_JOB_NODELIST:-} ]] ||
  die 'not inside a SLURM allocation (SLURM_JOB_ID / SLURM_JOB_NODELIST unset);' \
      'submit with sbatch or run inside salloc'
nodes=${nodes:-${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-}}}
is_count "$nodes" || die "node count '$nodes' is not a positive integer (--nodes N)"
# SLURM_GPUS_PER_NODE may name the type (a100:8); the count is what follows the last colon.
per_node_gpus=${SLURM_GPUS_PER_NODE:-}
gpus=${gpus:-${SLURM_GPUS_ON_NODE:-${per_node_gpus##*:}}}
is_count "$gpus" ||
  die "GPUs per node '$gpus' is not a positive integer;" \
      'allocate GPUs (sbatch --gpus-per-node) or pass --gpus-per-node G'
port=${port:-$((SLURM_JOB_ID % 4096 + 61440))}
[[ $port =~ ^[0-9]+$ ]] && ((10#$port > 0 && 10#$port < 65536)) ||
  die "--port must be in 1..65535, got '$port'"
port=$((10#$port))

coordinator="$(first_host "$SLURM_JOB_NODELIST"):$port"
env="export JAX_COORDINATOR_ADDRESS=$coordinator"
env+=' JAX_NUM_PROCESSES=$SLURM_NTASKS JAX_PROCESS_ID=$SLURM_PROCID'
if [[ $per_node == 1 ]]; then
  tasks_per_node=1
  env+=" JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((gpus - 1)))"
else
  tasks_per_node=$gpus
  # Its own GPU among all of the node's, or the only one if srun bound one GPU to the task.
  env+='; case ${CUDA_VISIBLE_DEVICES:-,} in *,*) export JAX_LOCAL_DEVICE_IDS=$SLURM_LOCALID;;'
  env+=' *) export JAX_LOCAL_DEVICE_IDS=0;; esac'
fi

srun=(srun --nodes="$nodes" --ntasks=$((nodes * tasks_per_node)) --ntasks-per-node="$tasks_per_node"
      --kill-on-bad-exit=1 --label bash -c "$env; exec \"\$@\"" bash "${command[@]}")
if [[ $dry_run == 1 ]]; then
  echo "# $nodes node(s) x $tasks_per_node process(es), coordinator $coordinator"
  quote "${srun[@]}"
else
  exec "${srun[@]}"
fi
