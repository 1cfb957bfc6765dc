"""Prediction: tiling plans, receptive reach, the tiled engine, reductions to labels, one
predict_image job, and Dask prediction for images too large for one machine.

``from unetsl.predict import predict, reduce`` is the notebook API (no Keras import until a
model is used).
"""

from unetsl.predict.engine import predict, predict_outputs
from unetsl.predict.reduce import reduce

__all__ = ["predict", "predict_outputs", "reduce"]
