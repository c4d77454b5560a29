#!/usr/bin/env bash
# Starts `sde-jax train` on every worker of a Cloud TPU VM slice (one process per host).
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/DIR \
#       [--project PROJECT] [--repo URL [--ref REF]] [--dir DIR] [--detach] [--dry-run] \
#       [--config.a.b=v ...] [-- MORE SDE-JAX FLAGS]
#
# Every worker runs the same command through `gcloud compute tpus tpu-vm ssh --worker=all`;
# jax.distributed.initialize() finds the other workers of the slice itself (SDE_JAX_DISTRIBUTED=1
# asks sde_jax.parallel.initialize to call it). The workdir must be a gs:// path: all hosts write
# one checkpoint together. With --repo, a first command clones (or updates) the repository into
# DIR on every worker and installs it with jax[tpu]. --dry-run prints the gcloud commands and runs
# nothing. See docs/launch.md.
set -euo pipefail

usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//' >&2; }
die() { echo "launch/tpu_pod.sh: $*" >&2; usage; exit 2; }

# Shell-quotes each argument only where needed, so printed commands stay readable.
quote() {
  local out=() a
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("${a@Q}"); fi
  done
  echo "${out[*]}"
}

tpu='' zone='' project='' config='' workdir='' repo='' ref='' dir='sde-jax'
detach=0 dry_run=0 passthrough=()
need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --tpu|--zone|--project|--config|--workdir|--repo|--ref|--dir)
      need "$@"; declare "${1#--}=$2"; shift 2 ;;
    --tpu=*|--zone=*|--project=*|--config=*|--workdir=*|--repo=*|--ref=*|--dir=*)
      opt=${1%%=*}; declare "${opt#--}=${1#*=}"; shift ;;
    --detach) detach=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --config.*) passthrough+=("$1"); shift ;;
    --) shift; passthrough+=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (config overrides are --config.a.b=v; other sde-jax flags" \
           "go after '--')" ;;
  esac
done

[[ -n $tpu ]] || die '--tpu NAME is required'
[[ -n $zone ]] || die '--zone ZONE is required'
[[ -n $config ]] || die '--config CONFIG is required'
[[ -n $workdir ]] || die '--workdir gs://BUCKET/DIR is required'
[[ $workdir == gs://?* ]] ||
  die "--workdir must be a gs:// path that every worker shares, got '$workdir'"
[[ -z $ref || -n $repo ]] || die '--ref needs --repo'

ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone")
[[ -z $project ]] || ssh+=(--project "$project")
ssh+=(--worker=all --command)

# Commands below run on the workers; ~/.local/bin is where `pip install --user` puts sde-jax.
remote_dir=$(quote "$dir")
setup=''
if [[ -n $repo ]]; then
  git="git -C $remote_dir"
  setup="{ test -d $remote_dir/.git || git clone --quiet $(quote "$repo") $remote_dir; }"
  setup+=" && $git fetch --quiet origin $(quote "${ref:-HEAD}") && $git checkout --quiet FETCH_HEAD"
  setup+=" && python3 -m pip install --quiet --upgrade 'jax[tpu]' -e $remote_dir'[gcs]'"
fi
train="$(quote sde-jax train --config "$config" --workdir "$workdir" "${passthrough[@]}")"
if [[ $detach == 1 ]]; then
  train="nohup $train > sde-jax-train.log 2>&1 < /dev/null &"
fi
train="cd $remote_dir && export PATH=\"\$HOME/.local/bin:\$PATH\" SDE_JAX_DISTRIBUTED=1 && $train"

run() {
  if [[ $dry_run == 1 ]]; then quote "$@"; else "$@"; fi
}
[[ -z $setup ]] || run "${ssh[@]}" "$setup"
run "${ssh[@]}" "$train"
