#!/bin/bash
# Predict a big image (OME-Zarr, zarr or TIFF) on many Slurm jobs at once with Dask.
#
#   sbatch dask-predict.sh MODEL.h5 IMAGE.ome.zarr [OUTPUT.ome.zarr] [predict_image options ...]
#   WORKERS=16 sbatch dask-predict.sh net-best.h5 brain.ome.zarr
#
# This job is the small driver: predict_image plans the blocks and starts WORKERS worker
# jobs through dask-jobqueue's SLURMCluster (--dask slurm:N); each worker job loads the
# model once and predicts its blocks, reading the image and writing the OME-Zarr output
# directly on the shared file system. The worker jobs end with the driver. Image, model
# and output must be on a file system every node sees.
#
#SBATCH --job-name=unet-dask-predict
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=8g
#SBATCH --time=12:00:00
#SBATCH --output=%x-%j.log

set -euo pipefail

# The virtual environment unetsl is installed in, with the scale extra:
# ~/unet-env/bin/pip install "./unetsl[gpu,scale]"
unet_env=${UNET_ENV:-"$HOME/unet-env"}
workers=${WORKERS:-8}

# The worker jobs (dask-jobqueue reads DASK_JOBQUEUE__SLURM__* like its jobqueue.yaml):
# one Dask thread per job (one block at a time; TensorFlow uses the job's cores and GPU).
export DASK_JOBQUEUE__SLURM__CORES=1
export DASK_JOBQUEUE__SLURM__PROCESSES=1
export DASK_JOBQUEUE__SLURM__JOB_CPU=${WORKER_CPUS:-8}
export DASK_JOBQUEUE__SLURM__MEMORY=${WORKER_MEMORY:-32GB}
export DASK_JOBQUEUE__SLURM__WALLTIME=${WORKER_TIME:-04:00:00}
export DASK_JOBQUEUE__SLURM__QUEUE=${WORKER_PARTITION:-gpu}
export DASK_JOBQUEUE__SLURM__JOB_EXTRA_DIRECTIVES=${WORKER_DIRECTIVES:-'["--gres=gpu:1"]'}
export DASK_JOBQUEUE__SLURM__PYTHON="$unet_env/bin/python"
export DASK_JOBQUEUE__SLURM__LOG_DIRECTORY=${WORKER_LOGS:-dask-logs}

if [ $# -lt 2 ]; then
    echo "usage: sbatch dask-predict.sh MODEL.h5 IMAGE [OUTPUT.ome.zarr] [predict_image options ...]" >&2
    exit 2
fi
model=$1
image=$2
shift 2
output=()
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
    output=("$1")
    shift
fi

echo "#         start: $(date)"
echo "#       workers: $workers jobs of $DASK_JOBQUEUE__SLURM__JOB_CPU CPUs," \
     "$DASK_JOBQUEUE__SLURM__MEMORY, $DASK_JOBQUEUE__SLURM__JOB_EXTRA_DIRECTIVES" \
     "on $DASK_JOBQUEUE__SLURM__QUEUE"
echo "#         model: $model"
echo "#         image: $image"
"$unet_env/bin/predict_image" "$model" "$image" ${output[@]+"${output[@]}"} \
    --dask "slurm:$workers" -b "$@"
echo "#      finished: $(date)"
