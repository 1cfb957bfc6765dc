"""Networks: U-Net and cascade builders, multi-head models, losses, model files (the
original's .h5 too), patch shapes, weight transfer and the devices a model runs on.

Every module here imports Keras; ``from unetsl.nets import load_model`` is the notebook API.
"""

from unetsl.nets.model_files import load_model, save_model

__all__ = ["load_model", "save_model"]
