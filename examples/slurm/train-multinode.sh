#!/bin/bash
# Train a unetsl model data-parallel on several GPU nodes (N nodes x M GPUs).
#
#   sbatch train-multinode.sh MODEL.json [train_model options ...]
#   sbatch --nodes=4 --gres=gpu:2 train-multinode.sh MODEL.json
#
# srun starts one train_model per node; they find each other through Slurm
# (TensorFlow's SlurmClusterResolver) and train with MultiWorkerMirroredStrategy: every
# step, each of the N x M GPUs takes its share of the global batch and the gradients are
# averaged over all of them. Only the first task (the chief) writes MODEL-latest.h5,
# MODEL-best.h5, the logs and the curves. As with train.sh, an existing MODEL-latest.h5 is
# resumed (RESUME=0 starts afresh). Extra arguments go to train_model.
#
#SBATCH --job-name=unet-multinode
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=2-00:00:00
#SBATCH --mem=64g
#SBATCH --partition=gpu
#SBATCH --gres=gpu:4
#SBATCH --output=%x-%j.log

set -euo pipefail

# The virtual environment unetsl is installed in (see README.md in this folder).
unet_env=${UNET_ENV:-"$HOME/unet-env"}
nodes=${SLURM_JOB_NUM_NODES:-1}
gpus_per_node=${SLURM_GPUS_ON_NODE:-4}
# Patches per GPU per step; the global "batch size" is this x GPUs x nodes. 32 suits 2D
# patches of [1, 3, 64, 64]; 3D patches of [1, 64, 64, 64] need about 4.
per_gpu=${BATCH_PER_GPU:-32}
batch_size=$((per_gpu * gpus_per_node * nodes))
# The workers talk over TCP: task i of a node listens on UNETSL_PORT_BASE + i. A port
# from the job id keeps two jobs on one node apart.
export UNETSL_PORT_BASE=${UNETSL_PORT_BASE:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}

if [ $# -lt 1 ]; then
    echo "usage: sbatch train-multinode.sh MODEL.json [train_model options ...]" >&2
    exit 2
fi
config=$1
shift

resume=()
latest="${config%.json}-latest.h5"
if [ "${RESUME:-1}" != 0 ] && [ -f "$latest" ]; then
    resume=(--resume)
fi

echo "#         start: $(date)"
echo "#         nodes: $nodes x $gpus_per_node GPUs  (${SLURM_JOB_NODELIST:-$(hostname)})"
echo "#    batch size: $batch_size ($per_gpu per GPU)  ports from $UNETSL_PORT_BASE"
echo "#        config: $config"
if [ ${#resume[@]} -gt 0 ]; then
    echo "#      resuming: $latest"
fi
# one task per node, each with all GPUs of its node; a failed task ends the others
srun --kill-on-bad-exit=1 --ntasks-per-node=1 \
    "$unet_env/bin/train_model" -c "$config" -b -D "batch size=$batch_size" \
    ${resume[@]+"${resume[@]}"} "$@"
echo "#      finished: $(date)"
