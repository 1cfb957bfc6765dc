#!/bin/bash
# Predict one image with a trained unetsl model on a GPU node.
#
#   sbatch predict.sh MODEL.h5 IMAGE.tif [predict_image options ...]
#
# Writes pred-<model>-<image> into the folder sbatch was called from. Extra arguments go to
# predict_image, e.g. -D "normalize samples=true" or --probabilities.
#
#SBATCH --job-name=unet-prediction
#SBATCH --ntasks=1
#SBATCH --time=1:00:00
#SBATCH --mem=64g
#SBATCH --partition=gpu
#SBATCH --gres=gpu:4
#SBATCH --output=%x-%j.log

set -euo pipefail

# The virtual environment unetsl is installed in: python -m venv ~/unet-env &&
# ~/unet-env/bin/pip install "./unetsl[gpu]" (no module load: CUDA comes from pip).
unet_env=${UNET_ENV:-"$HOME/unet-env"}
# GPUs to use: those Slurm gave the job (--gres above) unless GPUS is set already.
export GPUS=${GPUS:-${SLURM_GPUS_ON_NODE:-4}}

if [ $# -lt 2 ]; then
    echo "usage: sbatch predict.sh MODEL.h5 IMAGE.tif [predict_image options ...]" >&2
    exit 2
fi
model=$1
image=$2
shift 2
model_name=$(basename "$model")
model_name=${model_name%.*}  # model_name-best.h5 -> model_name-best
image_file=$(basename "$image")
output="pred-$model_name-$image_file"

echo "#         start: $(date)"
echo "#          host: $(hostname)  GPUS=$GPUS"
echo "#       working: $(pwd)"
echo "#    model file: $model"
echo "#    to predict: $image"
echo "#        output: $output"
"$unet_env/bin/predict_image" "$model" "$image" "$output" -D "batch size=128" "$@" -b
echo "#      finished: $(date)"
