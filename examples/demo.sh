#!/usr/bin/env bash
# The whole unetsl path on generated example data, in ./demo (safe to re-run).
# Each step is the command a user would type; `make demo` runs it inside .venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${DEMO_DIR:-demo}"
epochs="${DEMO_EPOCHS:-15}"
mkdir -p "$work"
cd "$work"
rm -f epithelium-2d*.h5 training-log_* batch-log_* pred-* cells*

echo "== 1. generate synthetic epithelium time series (images/, labels/, held-out/)"
python "$here/make_example_data.py" . --kind 2d --n 6 --held-out > /dev/null
ls images labels held-out/epi-holdout.tif

echo "== 2. create the model from examples/epithelium-2d.json"
cp "$here/epithelium-2d.json" epithelium-2d.json
create_model -c epithelium-2d.json -b

echo "== 3. attach the training data (paired folders, multiclass labels)"
attach_data_sources -c epithelium-2d.json --paired images labels --labeller multiclass

echo "== 4. train ($epochs epochs on the CPU)"
train_model -c epithelium-2d.json -b -D "epochs=$epochs"

echo "== 5. predict the held-out image with the best model"
predict_image epithelium-2d-best.h5 held-out/epi-holdout.tif pred-epithelium-2d-holdout.tif -b \
    --probabilities

echo "== 6. evaluate against its true labels"
evaluate_prediction pred-epithelium-2d-holdout.tif held-out/labels/epi-holdout.tif \
    --tolerance 1.5 --json evaluation.json \
    --overlay overlay.png --image held-out/epi-holdout.tif

echo "== 7. cells: segment the membrane probabilities, track them over time, measure them"
segment_cells pred-epithelium-2d-holdout-prob.tif cells-holdout.tif --table cells.csv \
    --rois cells-rois.zip

echo "== 8. score the cells against the true cells (ids kept over time)"
evaluate_prediction cells-holdout.tif held-out/cells/epi-holdout.tif --instances \
    --json cell-scores.json --overlay cells.png --image held-out/epi-holdout.tif

echo
echo "demo finished in $(pwd):"
echo "  model         epithelium-2d-best.h5 (latest: epithelium-2d-latest.h5)"
echo "  logs          $(ls training-log_*.txt | tail -n 1), curves epithelium-2d-curves.png"
echo "  prediction    pred-epithelium-2d-holdout.tif (open it in Fiji), probabilities *-prob.tif"
echo "  scores        evaluation.json (pixels), cell-scores.json (cells)"
echo "  cells         cells-holdout.tif (ids kept over time), cells-holdout-res_track.txt"
echo "  measurements  cells.csv (one row per cell per time point), cells-rois.zip (Fiji ROIs)"
echo "  pictures      overlay.png (membranes), cells.png (cell outlines coloured by id)"
