#!/usr/bin/env bash
# The whole unetsl path on generated example data, in ./demo (safe to re-run).
# Each step is the command a user would type; `make demo` runs it inside .venv.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${DEMO_DIR:-demo}"
mkdir -p "$work"
cd "$work"

echo "== 1. generate a synthetic 2D time series of epithelium (images/, labels/, held-out/)"
python "$here/make_example_data.py" . --kind 2d --n 4 --held-out

echo "== 2. create the model (config epithelium-2d.json -> epithelium-2d.h5)"
cp "$here/epithelium-2d.json" epithelium-2d.json
create_model -c epithelium-2d.json -b

echo "== 3. predict the held-out image"
predict_image epithelium-2d.h5 held-out/epi-holdout.tif pred-epithelium-2d-holdout.tif -b --probabilities

echo
echo "demo finished; outputs in $(pwd):"
ls -1 pred-* epithelium-2d.*
