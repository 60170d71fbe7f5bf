#!/usr/bin/env bash
# Embed a COCO-CN style TSV (text \t image_id \t base64 image) with ERNIE-ViL 2.0.
# Usage: bash run_infer.sh DEVICE CONFIG [-o key=value ...]
#   DEVICE: a GPU index (sets CUDA_VISIBLE_DEVICES, as the official script does) or "cpu".
#   CONFIG: e.g. packages/configs/ernie_vil_base.yaml (the official YAML works unchanged).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash $0 DEVICE CONFIG [-o key=value ...]   (DEVICE: a GPU index or cpu)" >&2
  exit 2
fi
device=$1
config=$2
shift 2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PYTHONPATH="$here/packages${PYTHONPATH:+:$PYTHONPATH}"
if [ "$device" = "cpu" ]; then
  target=cpu
elif [[ "$device" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  export CUDA_VISIBLE_DEVICES=$device
  target=gpu
else
  echo "error: DEVICE must be a GPU index (e.g. 0) or cpu, got '$device'" >&2
  exit 2
fi
exec "${PYTHON:-python}" -m ernievil2 infer "$config" -o "device=$target" "$@"
