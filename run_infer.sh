#!/usr/bin/env bash
# Embed a COCO-CN style TSV (text \t image_id \t base64 image) with ERNIE-ViL 2.0.
# Usage: bash run_infer.sh [paddle.distributed.launch options] DEVICE CONFIG [-o key=value ...]
#   DEVICE: a GPU index (sets CUDA_VISIBLE_DEVICES, as the official script does), a list of GPUs (0,1,2,3: one
#           rank per GPU), or cpu (one process, or --nproc_per_node N / the config's cpu_processes CPU ranks).
#   CONFIG: e.g. packages/configs/ernie_vil_base.yaml (the official YAML works unchanged).
#   Launcher options (each with its value): --nproc_per_node N, --master IP:PORT, --nnodes N, --rank R, --log_dir D.
#   Several ranks embed chunks of the rows into <output_file>.work/; rank 0 writes the outputs.
set -euo pipefail
usage="usage: bash $0 [launcher options] DEVICE CONFIG [-o key=value ...]   (DEVICE: a GPU index or list, or cpu)"
launch_opts=()
while [ $# -gt 0 ]; do
  case "$1" in
    --*=*) launch_opts+=("$1"); shift ;;
    --*) [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }; launch_opts+=("$1" "$2"); shift 2 ;;
    *) break ;;
  esac
done
if [ $# -lt 2 ]; then
  echo "$usage" >&2
  exit 2
fi
device=$1
config=$2
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONPATH="$here/packages${PYTHONPATH:+:$PYTHONPATH}"
python_bin=${PYTHON:-python}
entry=("$here/packages/ernievil2/cli/launch.py" infer)
if [ "$device" = "cpu" ]; then
  target=cpu
elif [[ "$device" =~ ^[0-9]+$ ]]; then
  export CUDA_VISIBLE_DEVICES=$device
  target=gpu
elif [[ "$device" =~ ^[0-9]+(,[0-9]+)+$ ]]; then
  launch_opts+=("--devices" "$device")  # one rank per listed GPU
  target=gpu
else
  echo "error: DEVICE must be a GPU index (e.g. 0), a list of GPUs (0,1,2,3) or cpu, got '$device'" >&2
  exit 2
fi
if [ ${#launch_opts[@]} -eq 0 ]; then
  # No launcher options: the config decides (cpu_processes CPU ranks; one process by default).
  plan=$("$python_bin" -m ernievil2 launch-plan --infer "$config" -o "device=$target" "$@") || exit $?
  mapfile -t launch_opts <<< "$plan"  # one word per line: paths with spaces survive
  if [ "${launch_opts[0]:-single}" = "single" ]; then
    exec "$python_bin" -m ernievil2 infer "$config" -o "device=$target" "$@"
  fi
  launch_opts=("${launch_opts[@]:1}")
fi
exec "$python_bin" -m paddle.distributed.launch "${launch_opts[@]}" "${entry[@]}" "$config" -o "device=$target" "$@"
