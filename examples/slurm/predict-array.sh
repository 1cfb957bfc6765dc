#!/bin/bash
# Predict every *.tif image of a folder with a Slurm job array: one image per array task.
#
#   bash predict-array.sh MODEL.h5 FOLDER
#       lists the images (task number: file) and prints the sbatch command to submit
#   sbatch --array=0-<N-1> predict-array.sh MODEL.h5 FOLDER [predict_image options ...]
#       task i predicts image i of the sorted list into $OUTPUT_DIR (default: predictions)
#
# The list is FOLDER/*.tif sorted bytewise (LC_ALL=C), without files named pred-*, so every
# task and the listing agree. Add %K to --array (e.g. --array=0-99%8) to run at most K tasks
# at a time.
#
#SBATCH --job-name=unet-predict-array
#SBATCH --ntasks=1
#SBATCH --time=1:00:00
#SBATCH --mem=32g
#SBATCH --partition=gpu
#SBATCH --gres=gpu:1
#SBATCH --output=%x-%A_%a.log

set -euo pipefail

# The virtual environment unetsl is installed in: python -m venv ~/unet-env &&
# ~/unet-env/bin/pip install "./unetsl[gpu]" (no module load: CUDA comes from pip).
unet_env=${UNET_ENV:-"$HOME/unet-env"}
# GPUs to use: those Slurm gave the task (--gres above) unless GPUS is set already.
export GPUS=${GPUS:-${SLURM_GPUS_ON_NODE:-1}}
output_dir=${OUTPUT_DIR:-predictions}

usage="usage: sbatch --array=0-<N-1> predict-array.sh MODEL.h5 FOLDER [predict_image options ...]"
if [ $# -lt 2 ]; then
    echo "$usage" >&2
    exit 2
fi
model=$1
folder=${2%/}
shift 2
if [ ! -f "$model" ]; then
    echo "error: $model: no such model file" >&2
    exit 2
fi
if [ ! -d "$folder" ]; then
    echo "error: $folder: no such folder" >&2
    exit 2
fi

images=()
while IFS= read -r path; do
    images+=("$path")
done < <(find -L "$folder" -maxdepth 1 -type f -name '*.tif' ! -name 'pred-*' | LC_ALL=C sort)
n=${#images[@]}
if [ "$n" -eq 0 ]; then
    echo "error: $folder: no *.tif images" >&2
    exit 2
fi

if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
    echo "$n images in $folder:"
    for i in "${!images[@]}"; do
        echo "  $i: ${images[$i]}"
    done
    extra=""
    if [ $# -gt 0 ]; then
        extra=" $(printf '%q ' "$@")"
        extra=${extra% }
    fi
    echo "submit them with:"
    echo "  sbatch --array=0-$((n - 1)) $0 $(printf '%q' "$model") $(printf '%q' "$folder")$extra"
    exit 0
fi

task=$SLURM_ARRAY_TASK_ID
if [ "$task" -ge "$n" ]; then
    echo "error: array task $task but $folder holds only $n images (use --array=0-$((n - 1)))" >&2
    exit 2
fi
image=${images[$task]}
model_name=$(basename "$model")
model_name=${model_name%.*}
output="$output_dir/pred-$model_name-$(basename "$image")"
mkdir -p "$output_dir"

echo "#         start: $(date)"
echo "#          host: $(hostname)  GPUS=$GPUS"
echo "#          task: $task of 0-$((n - 1))"
echo "#    model file: $model"
echo "#    to predict: $image"
echo "#        output: $output"
"$unet_env/bin/predict_image" "$model" "$image" "$output" -D "batch size=128" "$@" -b
echo "#      finished: $(date)"
