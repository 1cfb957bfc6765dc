"""The original's Keras 2 layers (channels-first) as Keras 3 channels-last layer configs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
from keras import layers

from unetsl.errors import UnetslError

if TYPE_CHECKING:
    from unetsl.nets.legacy import LegacyFile

log = logging.getLogger("unetsl")


# Layer conversion
# --------------------------------------------------------------------------------------------


class _Converter:
    """Builds the Keras 3 layers of one legacy model, channels-last."""

    def __init__(self, legacy: LegacyFile):
        self.legacy = legacy
        self.channels_first = legacy.channels_first
        self.where = f"model file {str(legacy.path)!r}"

    # axes ---------------------------------------------------------------------------------
    def axis(self, axis: int, rank: int, layer: str) -> int:
        """A channels-first axis of a rank-``rank`` tensor -> the same axis channels-last."""
        if not isinstance(axis, int) or isinstance(axis, bool) or not -rank <= axis < rank:
            raise UnetslError(f"{self.where}: layer {layer!r} has axis {axis!r}, not an axis of "
                              f"a rank-{rank} tensor")
        axis %= rank
        if not self.channels_first or axis == 0:
            return axis
        return rank - 1 if axis == 1 else axis - 1

    # layers -------------------------------------------------------------------------------
    def build(self, entry: dict, inputs: list) -> Any:
        """Apply the converted layer of ``entry`` to ``inputs`` (Keras 3 tensors)."""
        cls = entry.get("class_name")
        cfg = dict(entry.get("config", {}))
        name = cfg.get("name", entry.get("name"))
        handler = _HANDLERS.get(cls)
        if handler is None:
            hint = " (it holds Python code, which is never loaded)" if cls == "Lambda" else ""
            raise UnetslError(f"{self.where}: layer {name!r} of type {cls} cannot be converted"
                              f"{hint}; supported: {', '.join(sorted(_HANDLERS))}")
        if cls in _LAYOUT_SENSITIVE and self.channels_first:
            raise UnetslError(f"{self.where}: layer {name!r} of type {cls} depends on the "
                              "channels-first layout and cannot be converted")
        return handler(self, name, cfg, inputs)


def _one(inputs: list, name: str, where: str):
    if len(inputs) != 1:
        raise UnetslError(f"{where}: layer {name!r} expects one input, got {len(inputs)}")
    return inputs[0]


def _tup(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _common(cfg: dict, name: str) -> dict:
    dtype = cfg.get("dtype")
    kwargs: dict[str, Any] = {"name": name}
    if isinstance(dtype, str):
        kwargs["dtype"] = dtype
    return kwargs


def _activation(value: Any) -> Any:
    """Keras 2 activations are names, or serialised dicts for advanced ones."""
    if isinstance(value, dict):
        return value.get("config", {}).get("name") or value.get("class_name", "linear").lower()
    return value or "linear"


def _conv(conv_cls) -> Callable:
    def handler(cv: _Converter, name: str, cfg: dict, inputs: list):
        x = _one(inputs, name, cv.where)
        activation = _activation(cfg.get("activation"))
        kwargs = dict(
            filters=int(cfg["filters"]),
            kernel_size=tuple(cfg["kernel_size"]),
            strides=_tup(cfg.get("strides", 1)),
            padding=cfg.get("padding", "valid"),
            data_format="channels_last",
            dilation_rate=_tup(cfg.get("dilation_rate", 1)),
            use_bias=bool(cfg.get("use_bias", True)),
            **_common(cfg, name),
        )
        if cfg.get("groups", 1) != 1:
            kwargs["groups"] = int(cfg["groups"])
        if activation == "softmax" and cv.channels_first:
            y = conv_cls(activation="linear", **kwargs)(x)
            return _softmax_over(cv, y, -1, f"{name}-softmax")
        return conv_cls(activation=activation, **kwargs)(x)

    return handler


def _transpose_conv(conv_cls) -> Callable:
    def handler(cv: _Converter, name: str, cfg: dict, inputs: list):
        x = _one(inputs, name, cv.where)
        if cfg.get("output_padding") not in (None, [None] * len(cfg["kernel_size"])):
            raise UnetslError(f"{cv.where}: layer {name!r}: output_padding is not supported")
        return conv_cls(
            filters=int(cfg["filters"]), kernel_size=tuple(cfg["kernel_size"]),
            strides=tuple(cfg.get("strides", 1)), padding=cfg.get("padding", "valid"),
            data_format="channels_last", activation=_activation(cfg.get("activation")),
            use_bias=bool(cfg.get("use_bias", True)), **_common(cfg, name),
        )(x)

    return handler


def _pool(pool_cls) -> Callable:
    def handler(cv: _Converter, name: str, cfg: dict, inputs: list):
        x = _one(inputs, name, cv.where)
        strides = cfg.get("strides")
        return pool_cls(
            pool_size=tuple(cfg["pool_size"]) if isinstance(cfg["pool_size"], list)
            else cfg["pool_size"],
            strides=tuple(strides) if isinstance(strides, list) else strides,
            padding=cfg.get("padding", "valid"), data_format="channels_last",
            **_common(cfg, name),
        )(x)

    return handler


def _global_pool(pool_cls) -> Callable:
    def handler(cv: _Converter, name: str, cfg: dict, inputs: list):
        x = _one(inputs, name, cv.where)
        return pool_cls(data_format="channels_last", keepdims=bool(cfg.get("keepdims", False)),
                        **_common(cfg, name))(x)

    return handler


def _upsampling(up_cls) -> Callable:
    def handler(cv: _Converter, name: str, cfg: dict, inputs: list):
        x = _one(inputs, name, cv.where)
        size = cfg.get("size", 2)
        kwargs = {}
        if up_cls is not layers.UpSampling1D:
            kwargs["data_format"] = "channels_last"
        if up_cls is layers.UpSampling2D and cfg.get("interpolation"):
            kwargs["interpolation"] = cfg["interpolation"]
        return up_cls(size=tuple(size) if isinstance(size, list) else size, **kwargs,
                      **_common(cfg, name))(x)

    return handler


def _spatial_dropout(drop_cls) -> Callable:
    def handler(cv: _Converter, name: str, cfg: dict, inputs: list):
        x = _one(inputs, name, cv.where)
        kwargs = {} if drop_cls is layers.SpatialDropout1D else {"data_format": "channels_last"}
        return drop_cls(float(cfg.get("rate", 0.0)), seed=cfg.get("seed"), **kwargs,
                        **_common(cfg, name))(x)

    return handler


def _dropout(cv: _Converter, name: str, cfg: dict, inputs: list):
    x = _one(inputs, name, cv.where)
    if cfg.get("noise_shape") is not None:
        raise UnetslError(f"{cv.where}: layer {name!r}: Dropout noise_shape is not supported")
    return layers.Dropout(float(cfg.get("rate", 0.0)), seed=cfg.get("seed"),
                          **_common(cfg, name))(x)


def _gaussian(noise_cls, key: str) -> Callable:
    def handler(cv: _Converter, name: str, cfg: dict, inputs: list):
        x = _one(inputs, name, cv.where)
        return noise_cls(float(cfg.get(key, 0.0)), seed=cfg.get("seed"),
                         **_common(cfg, name))(x)

    return handler


def _softmax_over(cv: _Converter, x, axis_cf: int, name: str):
    rank = len(x.shape)
    return layers.Softmax(axis=cv.axis(axis_cf, rank, name), name=name)(x)


def _activation_layer(cv: _Converter, name: str, cfg: dict, inputs: list):
    x = _one(inputs, name, cv.where)
    activation = _activation(cfg.get("activation"))
    if activation == "softmax" and cv.channels_first:
        # Keras 2's Activation("softmax") normalises over the last axis of the tensor, which
        # in a channels-first model is x, not the channels; keep that behaviour.
        log.warning(f"{cv.where}: layer {name!r} applies softmax over the last (x) axis as "
                    "the original did; kept as is")
        return _softmax_over(cv, x, -1, name)
    return layers.Activation(activation, **_common(cfg, name))(x)


def _softmax(cv: _Converter, name: str, cfg: dict, inputs: list):
    x = _one(inputs, name, cv.where)
    axis = cfg.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise UnetslError(f"{cv.where}: layer {name!r}: softmax over several axes")
        axis = axis[0]
    rank = len(x.shape)
    mapped = cv.axis(axis, rank, name)
    if mapped == rank - 1:  # over the channels: an Activation, so the activation is readable
        return layers.Activation("softmax", **_common(cfg, name))(x)
    return layers.Softmax(axis=mapped, **_common(cfg, name))(x)


def _relu(cv: _Converter, name: str, cfg: dict, inputs: list):
    x = _one(inputs, name, cv.where)
    return layers.ReLU(max_value=cfg.get("max_value"),
                       negative_slope=float(cfg.get("negative_slope", 0.0)),
                       threshold=float(cfg.get("threshold", 0.0)), **_common(cfg, name))(x)


def _leaky_relu(cv: _Converter, name: str, cfg: dict, inputs: list):
    x = _one(inputs, name, cv.where)
    slope = cfg.get("alpha", cfg.get("negative_slope", 0.3))
    return layers.LeakyReLU(negative_slope=float(slope), **_common(cfg, name))(x)


def _elu(cv: _Converter, name: str, cfg: dict, inputs: list):
    x = _one(inputs, name, cv.where)
    return layers.ELU(alpha=float(cfg.get("alpha", 1.0)), **_common(cfg, name))(x)


def _concatenate(cv: _Converter, name: str, cfg: dict, inputs: list):
    if len(inputs) < 2:
        raise UnetslError(f"{cv.where}: layer {name!r} concatenates fewer than two tensors")
    axis = cv.axis(cfg.get("axis", -1), len(inputs[0].shape), name)
    return layers.Concatenate(axis=axis, **_common(cfg, name))(inputs)


def _merge(merge_cls) -> Callable:
    def handler(cv: _Converter, name: str, cfg: dict, inputs: list):
        return merge_cls(**_common(cfg, name))(inputs)

    return handler


def _batch_norm(cv: _Converter, name: str, cfg: dict, inputs: list):
    x = _one(inputs, name, cv.where)
    axis = cfg.get("axis", -1)
    if isinstance(axis, list):
        if len(axis) != 1:
            raise UnetslError(f"{cv.where}: layer {name!r}: batch normalisation over several "
                              "axes is not supported")
        axis = axis[0]
    return layers.BatchNormalization(
        axis=cv.axis(axis, len(x.shape), name), momentum=float(cfg.get("momentum", 0.99)),
        epsilon=float(cfg.get("epsilon", 1e-3)), center=bool(cfg.get("center", True)),
        scale=bool(cfg.get("scale", True)), **_common(cfg, name),
    )(x)


def _padding_or_cropping(pad_cls, key: str) -> Callable:
    def handler(cv: _Converter, name: str, cfg: dict, inputs: list):
        x = _one(inputs, name, cv.where)
        value = cfg.get(key)
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs = {} if pad_cls in (layers.ZeroPadding1D, layers.Cropping1D) else \
            {"data_format": "channels_last"}
        return pad_cls(value, **kwargs, **_common(cfg, name))(x)

    return handler


def _dense(cv: _Converter, name: str, cfg: dict, inputs: list):
    x = _one(inputs, name, cv.where)
    return layers.Dense(int(cfg["units"]), activation=_activation(cfg.get("activation")),
                        use_bias=bool(cfg.get("use_bias", True)), **_common(cfg, name))(x)


def _flatten(cv: _Converter, name: str, cfg: dict, inputs: list):
    return layers.Flatten(**_common(cfg, name))(_one(inputs, name, cv.where))


def _reshape(cv: _Converter, name: str, cfg: dict, inputs: list):
    return layers.Reshape(tuple(cfg["target_shape"]), **_common(cfg, name))(
        _one(inputs, name, cv.where))


_HANDLERS: dict[str, Callable] = {
    "Conv1D": _conv(layers.Conv1D),
    "Conv2D": _conv(layers.Conv2D),
    "Conv3D": _conv(layers.Conv3D),
    "Conv2DTranspose": _transpose_conv(layers.Conv2DTranspose),
    "Conv3DTranspose": _transpose_conv(layers.Conv3DTranspose),
    "MaxPooling1D": _pool(layers.MaxPooling1D),
    "MaxPooling2D": _pool(layers.MaxPooling2D),
    "MaxPooling3D": _pool(layers.MaxPooling3D),
    "AveragePooling1D": _pool(layers.AveragePooling1D),
    "AveragePooling2D": _pool(layers.AveragePooling2D),
    "AveragePooling3D": _pool(layers.AveragePooling3D),
    "GlobalMaxPooling2D": _global_pool(layers.GlobalMaxPooling2D),
    "GlobalMaxPooling3D": _global_pool(layers.GlobalMaxPooling3D),
    "GlobalAveragePooling2D": _global_pool(layers.GlobalAveragePooling2D),
    "GlobalAveragePooling3D": _global_pool(layers.GlobalAveragePooling3D),
    "UpSampling1D": _upsampling(layers.UpSampling1D),
    "UpSampling2D": _upsampling(layers.UpSampling2D),
    "UpSampling3D": _upsampling(layers.UpSampling3D),
    "SpatialDropout1D": _spatial_dropout(layers.SpatialDropout1D),
    "SpatialDropout2D": _spatial_dropout(layers.SpatialDropout2D),
    "SpatialDropout3D": _spatial_dropout(layers.SpatialDropout3D),
    "Dropout": _dropout,
    "GaussianNoise": _gaussian(layers.GaussianNoise, "stddev"),
    "GaussianDropout": _gaussian(layers.GaussianDropout, "rate"),
    "Activation": _activation_layer,
    "Softmax": _softmax,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "ELU": _elu,
    "Concatenate": _concatenate,
    "Add": _merge(layers.Add),
    "Subtract": _merge(layers.Subtract),
    "Multiply": _merge(layers.Multiply),
    "Average": _merge(layers.Average),
    "Maximum": _merge(layers.Maximum),
    "Minimum": _merge(layers.Minimum),
    "BatchNormalization": _batch_norm,
    "ZeroPadding1D": _padding_or_cropping(layers.ZeroPadding1D, "padding"),
    "ZeroPadding2D": _padding_or_cropping(layers.ZeroPadding2D, "padding"),
    "ZeroPadding3D": _padding_or_cropping(layers.ZeroPadding3D, "padding"),
    "Cropping1D": _padding_or_cropping(layers.Cropping1D, "cropping"),
    "Cropping2D": _padding_or_cropping(layers.Cropping2D, "cropping"),
    "Cropping3D": _padding_or_cropping(layers.Cropping3D, "cropping"),
    "Dense": _dense,
    "Flatten": _flatten,
    "Reshape": _reshape,
}

#: Layers whose meaning depends on where the channels are: refused for channels-first files.
_LAYOUT_SENSITIVE = {"Dense", "Flatten", "Reshape", "Conv1D", "MaxPooling1D",
                     "AveragePooling1D", "UpSampling1D", "ZeroPadding1D", "Cropping1D",
                     "SpatialDropout1D"}


def _input_layer(cv: _Converter, entry: dict):
    cfg = entry.get("config", {})
    name = cfg.get("name", entry.get("name"))
    shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
    if not shape or len(shape) < 2:
        raise UnetslError(f"{cv.where}: input {name!r} has no shape")
    shape = list(shape[1:])
    if cv.channels_first:
        shape = shape[1:] + shape[:1]
    dtype = cfg.get("dtype") if isinstance(cfg.get("dtype"), str) else "float32"
    return keras.Input(shape=tuple(shape), dtype=dtype, name=name)


def _inbound(entry: dict, where: str) -> list[tuple[str, int, int]]:
    """The (layer, node, tensor) triples a layer is called on; one call per layer only."""
    nodes = entry.get("inbound_nodes", [])
    name = entry.get("name")
    if not nodes:
        return []
    if len(nodes) > 1:
        raise UnetslError(f"{where}: layer {name!r} is used {len(nodes)} times (shared "
                          "layers are not supported)")
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3 style {"args": ..., "kwargs": ...}
        raise UnetslError(f"{where}: layer {name!r}: unexpected node format for a Keras-2 file")
    result = []
    for item in node:
        if not isinstance(item, list) or len(item) < 3:
            raise UnetslError(f"{where}: layer {name!r}: malformed inbound node {item!r}")
        if item[3:] and item[3]:
            raise UnetslError(f"{where}: layer {name!r} is called with keyword arguments "
                              f"{item[3]!r}; not supported")
        result.append((str(item[0]), int(item[1]), int(item[2])))
    return result


def _tensor_refs(refs: Any, where: str) -> list[tuple[str, int, int]]:
    if refs and isinstance(refs[0], str):  # a single [name, node, index]
        refs = [refs]
    return [(str(r[0]), int(r[1]), int(r[2])) for r in refs]


