"""napari layers and unetsl arrays: axis letters, pixel size, and the layers a result becomes.

A layer is any N-D array; unetsl works on (t, c, z, y, x). A layer's axes are named by its
``axis_labels`` when they are unetsl's letters (the plugin's samples and outputs carry
them), else guessed from its dimensions as a plain TIFF stack is read (3 axes: z, y, x), and
the widgets show them in an editable "axes" field for the case the guess is wrong (a movie
read from a plain TIFF: "tyx").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unetsl.errors import UnetslError
from unetsl.io.tiff import to_tczyx

LETTERS = "tczyx"
GUESS = {2: "yx", 3: "zyx", 4: "tzyx", 5: "tczyx"}


def layer_axes(layer: Any) -> str:
    """The axis letters of ``layer`` ("yx", "tyx", "zyx", "tczyx" ..., "yxc" for RGB)."""
    ndim = int(layer.ndim)
    labels = [str(a).lower() for a in getattr(layer, "axis_labels", ())]
    rgb = bool(getattr(layer, "rgb", False))
    named = "".join(labels)
    if len(labels) == ndim and _valid(named):
        return named + ("c" if rgb and "c" not in named else "")
    if ndim not in GUESS:
        return ""
    return GUESS[ndim] + ("c" if rgb else "")


def _valid(axes: str) -> bool:
    return (len(axes) == len(set(axes)) and set(axes) <= set(LETTERS)
            and (axes.endswith("yx") or axes.endswith("yxc")))


def check_axes(axes: str, data: Any, name: str) -> str:
    """``axes`` lower-cased, or a one-line UnetslError naming the layer."""
    axes = axes.strip().lower()
    shape = tuple(np.shape(data))
    if len(axes) != len(shape) or not _valid(axes):
        raise UnetslError(f"layer {name!r}: axes {axes!r} do not name its {len(shape)} "
                          f"dimensions {shape}: use letters of t, c, z, y, x ending in yx")
    return axes


def layer_tczyx(layer: Any, axes: str) -> np.ndarray:
    """The layer's data as a (t, c, z, y, x) array (a view when possible)."""
    axes = check_axes(axes, layer.data, layer.name)
    return to_tczyx(np.asarray(layer.data), axes.upper(), source=f"layer {layer.name!r}")


def layer_spacing(layer: Any, axes: str) -> tuple[float, float, float]:
    """Pixel size (z, y, x) from the layer's scale (1 for an axis it lacks)."""
    scale = list(layer.scale)
    spatial = [a for a in axes if a != "c"] if len(scale) < len(axes) else list(axes)
    by_axis = dict(zip(spatial, scale, strict=False))
    return tuple(abs(float(by_axis.get(a, 1.0))) for a in "zyx")  # type: ignore[return-value]


def layer_unit(layer: Any) -> str:
    """The unit of the layer's x axis as unetsl writes it ("micron", "pixel" ...)."""
    units = getattr(layer, "units", None)
    text = str(units[-1]) if units else "pixel"
    return "micron" if text in ("micrometer", "um", "µm") else text


def from_tczyx(array: np.ndarray, axes: str) -> np.ndarray:
    """A (t, c, z, y, x) array laid out as ``axes`` (axes it lacks must have size 1)."""
    index = tuple(slice(None) if a in axes else 0 for a in LETTERS)
    present = [a for a in LETTERS if a in axes]
    return np.asarray(array)[index].transpose([present.index(a) for a in axes])


def like_layer(layer: Any, axes: str, out_axes: str) -> dict[str, Any]:
    """Layer keyword arguments that place a result on ``layer``: its scale, translation and
    units for the axes the result keeps, and those axes as axis labels."""
    spatial = [a for a in axes if a != "c"] if len(layer.scale) < len(axes) else list(axes)
    scale = dict(zip(spatial, layer.scale, strict=False))
    translate = dict(zip(spatial, layer.translate, strict=False))
    units = dict(zip(spatial, [str(u) for u in getattr(layer, "units", ())], strict=False))
    return {"scale": [float(scale.get(a, 1.0)) for a in out_axes],
            "translate": [float(translate.get(a, 0.0)) for a in out_axes],
            "units": [units.get(a, "pixel") for a in out_axes],
            "axis_labels": tuple(out_axes)}


#: metadata key that marks the layers a unetsl widget made (and may therefore replace); its
#: value is the name the widget asked for (the layer may be called "name [2]")
MADE_BY = "unetsl"


def put_layer(viewer: Any, kind: str, data: np.ndarray, name: str, **kwargs: Any) -> Any:
    """Add a layer, or replace the data of the layer of that name when unetsl made it (a
    rerun updates its own result). A layer of that name that the user made or opened (an
    annotation) is never touched: the new layer gets a free name, "name [2]" and so on."""
    made_here = [layer for layer in viewer.layers if layer.metadata.get(MADE_BY) == name]
    if made_here:
        layer = made_here[0]
        if layer.data.shape == data.shape and _is_kind(layer, kind):
            layer.data = data
            return layer
        viewer.layers.remove(layer)
    free, k = name, 1
    while free in viewer.layers:
        k += 1
        free = f"{name} [{k}]"
    metadata = {**kwargs.pop("metadata", {}), MADE_BY: name}  # the name it was made under
    return getattr(viewer, f"add_{kind}")(data, name=free, metadata=metadata, **kwargs)


def layers_of(viewer: Any, kind: str, *, floating: bool = False) -> list[Any]:
    """The viewer's layers of a kind ("image", "labels"), for the widgets' layer choices;
    ``floating``: only those with float pixels (probabilities, not raw camera images)."""
    return [layer for layer in viewer.layers if _is_kind(layer, kind)
            and (not floating or np.issubdtype(np.dtype(layer.data.dtype), np.floating))]


def _is_kind(layer: Any, kind: str) -> bool:
    from napari import layers

    return isinstance(layer, {"image": layers.Image, "labels": layers.Labels}[kind])


def layer_names(viewer: Any, kind: str, *, floating: bool = False) -> Any:
    """A ComboBox ``choices`` callable: the names of the viewer's layers of a kind."""
    return lambda _widget=None: [layer.name for layer in layers_of(viewer, kind,
                                                                   floating=floating)]


def follow_layers(viewer: Any, combos: list[Any], axes: Any) -> None:
    """Keep the layer ``combos`` in step with the viewer's layer list, and the ``axes`` field
    with the layer chosen in the first combo (every widget that reads a layer needs this)."""

    def layer_chosen(_value: Any = None) -> None:
        name = combos[0].value
        if name in viewer.layers:
            axes.value = layer_axes(viewer.layers[name])

    def layers_changed(_event: Any = None) -> None:
        for combo in combos:
            combo.reset_choices()
            named = [choice for choice in combo.choices if choice is not None]
            if combo.value is None and named:  # not "-----" when a layer is there
                combo.value = named[0]
        layer_chosen()

    combos[0].changed.connect(layer_chosen)
    for event in ("inserted", "removed", "reordered"):
        getattr(viewer.layers.events, event).connect(layers_changed)
    layers_changed()


def show_cell(viewer: Any, layer: Any, axes: str, labels: np.ndarray, cell: int, t: int, *,
              alone: bool = False) -> None:
    """Select ``cell`` in the Labels ``layer`` (laid out as ``axes``, its data ``labels`` as
    (t, z, y, x)) so napari's paint, fill and erase tools edit it; move the sliders to time
    point ``t`` and the cell's middle z plane, and centre and zoom the camera so that it
    fills about a third of the canvas. ``alone``: show that cell only."""
    layer.selected_label = cell
    layer.show_selected_label = alone
    where = np.argwhere(labels[t] == cell)  # (z, y, x) pixels
    plane = {"t": t, "z": int(np.median(where[:, 0])) if len(where) else None}
    for letter, index in plane.items():
        if letter in axes and index is not None:
            k = axes.index(letter)
            viewer.dims.set_point(viewer.dims.ndim - layer.ndim + k,
                                  index * layer.scale[k] + layer.translate[k])
    world = {a: (where[:, n] * layer.scale[axes.index(a)] + layer.translate[axes.index(a)])
             for n, a in enumerate("zyx") if a in axes}
    shown = [world[a] for a in "yx" if a in world]
    if len(where) and len(shown) == 2:
        viewer.camera.center = tuple(float(v.mean()) for v in shown)
        extent = max(float(np.ptp(v)) + float(layer.scale[axes.index(a)])
                     for v, a in zip(shown, "yx", strict=True))
        canvas = min(getattr(viewer, "_canvas_size", (600, 600)))
        viewer.camera.zoom = canvas / (3 * extent)
