#!/bin/bash
# Train a unetsl model on a GPU node.
#
#   sbatch train.sh MODEL.json [train_model options ...]
#
# MODEL.json was made with create_model and has its data sources attached
# (attach_data_sources). Training writes MODEL-latest.h5 after every epoch (and when Slurm
# stops the job with SIGTERM) and MODEL-best.h5 when the monitored loss improves. When
# MODEL-latest.h5 exists, the job continues from it (train_model --resume): submit the same
# job again after the time limit. Set RESUME=0 to start afresh. Extra arguments go to
# train_model, e.g. -D "epochs=500".
#
#SBATCH --job-name=unet-training
#SBATCH --ntasks=1
#SBATCH --time=2-00:00:00
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
# Patches per step for all GPUs together (the global batch). 128 suits 2D patches of
# [1, 3, 64, 64] on 4 GPUs; 3D patches of [1, 64, 64, 64] need far fewer (about 4 per GPU).
batch_size=${BATCH_SIZE:-128}

if [ $# -lt 1 ]; then
    echo "usage: sbatch train.sh MODEL.json [train_model options ...]" >&2
    exit 2
fi
config=$1
shift

resume=()
latest="${config%.json}-latest.h5"
if [ "${RESUME:-1}" != 0 ] && [ -f "$latest" ]; then
    resume=(--resume)
fi

multi_gpu=false
if [ "$GPUS" -gt 1 ]; then
    multi_gpu=true
fi

echo "#         start: $(date)"
echo "#          host: $(hostname)  GPUS=$GPUS"
echo "#       working: $(pwd)"
echo "#        config: $config"
if [ ${#resume[@]} -gt 0 ]; then
    echo "#      resuming: $latest"
fi
"$unet_env/bin/train_model" -c "$config" -D "batch size=$batch_size" \
    -D "multi-gpu=$multi_gpu" ${resume[@]+"${resume[@]}"} "$@" -b
echo "#      finished: $(date)"
