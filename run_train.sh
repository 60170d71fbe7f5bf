#!/usr/bin/env bash
# Multi-view contrastive training of ERNIE-ViL 2.0, one process to many nodes.
# Usage: bash run_train.sh [paddle.distributed.launch options] CONFIG [-o key=value ...]
#   Options before CONFIG go to `python -m paddle.distributed.launch` unchanged, e.g.
#     bash run_train.sh --nproc_per_node 2 packages/configs/demo.yaml
#     bash run_train.sh --gpus 0,1,2,3 packages/configs/ernie_vil_base_finetune.yaml -o data.batch_size=64
#     bash run_train.sh --master 10.0.0.1:8090 --nnodes 2 --rank 0 --gpus 0,1,2,3 CONFIG   # on node 0
#   Without options: one process per visible GPU; on the CPU, the config's cpu_processes ranks (default 1).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONPATH="$here/packages${PYTHONPATH:+:$PYTHONPATH}"
python_bin=${PYTHON:-python}

launch_opts=()
config=""
while [ $# -gt 0 ]; do
  case "$1" in
    *.yaml|*.yml) config=$1; shift; break ;;
    *) launch_opts+=("$1"); shift ;;
  esac
done
if [ -z "$config" ]; then
  echo "usage: bash $0 [paddle.distributed.launch options] CONFIG.yaml [-o key=value ...]" >&2
  exit 2
fi
if [ ! -f "$config" ]; then
  echo "error: config file not found: $config" >&2
  exit 2
fi

entry=("$here/packages/ernievil2/cli/launch.py" train)
if [ ${#launch_opts[@]} -eq 0 ]; then
  # No launcher options: the config decides (one rank per visible GPU, or cpu_processes CPU ranks).
  plan=$("$python_bin" -m ernievil2 launch-plan "$config" "$@") || exit $?
  mapfile -t launch_opts <<< "$plan"  # one word per line: paths with spaces survive
  if [ "${launch_opts[0]:-single}" = "single" ]; then
    exec "$python_bin" "${entry[@]}" "$config" "$@"
  fi
  launch_opts=("${launch_opts[@]:1}")
fi
exec "$python_bin" -m paddle.distributed.launch "${launch_opts[@]}" "${entry[@]}" "$config" "$@"
