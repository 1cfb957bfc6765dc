"""Copy trained weights from one model into another, layer by layer.

The intended use is growing a trained shallow U-Net into a deeper one, or moving the weights
of an original ActiveUnetSegmentation model into a freshly created unetsl model: the
``contraction-*`` / ``expansion-*`` names coincide across depths and between the two
programs. The original's command matched by name, then walked both layer lists in order
with a bug (a layer could be overwritten twice, and the walk indexed the wrong list); here:

1. every origin layer with weights whose **name** exists in the target with the same number
   and shapes of weight arrays is copied;
2. the remaining weight-bearing origin layers are matched **in order** against the remaining
   weight-bearing target layers: the search for each origin layer starts after the target
   layer used last and takes the first one whose weight shapes match; a target layer is used
   at most once, and an origin layer without a match is skipped without moving the search;
3. every copy and every skip is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras

from unetsl.errors import UnetslError

__all__ = ["Copy", "TransferReport", "describe_layers", "transfer_weights"]


@dataclass(frozen=True)
class Copy:
    """One layer whose weights were copied."""

    origin_index: int
    origin_name: str
    target_index: int
    target_name: str
    how: str  # "by name" or "in order"
    shapes: tuple[tuple[int, ...], ...]

    def __str__(self) -> str:
        shapes = ", ".join(str(s) for s in self.shapes)
        return (f"copied {self.origin_index} {self.origin_name} -> {self.target_index} "
                f"{self.target_name} ({shapes}) {self.how}")


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did: copies, origin layers skipped, target layers kept."""

    copies: list[Copy] = field(default_factory=list)
    skipped: list[tuple[int, str, tuple[tuple[int, ...], ...]]] = field(default_factory=list)
    untouched: list[tuple[int, str, tuple[tuple[int, ...], ...]]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable lines: one per copy, then one per skipped / untouched layer."""
        out = [str(c) for c in self.copies]
        out += [f"skipped {i} {name} ({_shapes_text(s)}): no target layer with these shapes "
                "left" for i, name, s in self.skipped]
        out += [f"kept {i} {name} ({_shapes_text(s)}): no origin weights copied into it"
                for i, name, s in self.untouched]
        return out


def _shapes_text(shapes: tuple[tuple[int, ...], ...]) -> str:
    return ", ".join(str(s) for s in shapes)


def _shapes(layer: keras.layers.Layer) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(d) for d in w.shape) for w in layer.weights)


def describe_layers(model: keras.Model) -> list[str]:
    """The original's listing: ``<index> <name> (<weight shapes>)`` or ``\\t**<index> <name>``."""
    lines = []
    for i, layer in enumerate(model.layers):
        shapes = _shapes(layer)
        if shapes:
            lines.append(f"{i} {layer.name} ({_shapes_text(shapes)})")
        else:
            lines.append(f"\t**{i} {layer.name}")
    return lines


def transfer_weights(origin: keras.Model, target: keras.Model, *,
                     origin_name: str | None = None, target_name: str | None = None
                     ) -> TransferReport:
    """Copy weights from ``origin`` into ``target`` (in place); see the module notes.

    Raises UnetslError when not a single layer fits, so that nothing is written by mistake;
    it names the models by ``origin_name`` / ``target_name`` (their files) when given.
    """
    origin_label = origin_name or f"the origin model {origin.name!r}"
    target_label = target_name or f"the target model {target.name!r}"
    origin_layers = [(i, layer) for i, layer in enumerate(origin.layers) if layer.weights]
    target_layers = [(i, layer) for i, layer in enumerate(target.layers) if layer.weights]
    if not origin_layers:
        raise UnetslError(f"{origin_label}: the origin model has no layer with weights")
    report = TransferReport()
    used_origin: set[int] = set()
    used_target: set[int] = set()
    target_by_name = {layer.name: (i, layer) for i, layer in target_layers}

    def copy(oi: int, o_layer, ti: int, t_layer, how: str) -> None:
        t_layer.set_weights(o_layer.get_weights())
        used_origin.add(oi)
        used_target.add(ti)
        report.copies.append(Copy(oi, o_layer.name, ti, t_layer.name, how, _shapes(o_layer)))

    for oi, o_layer in origin_layers:
        match = target_by_name.get(o_layer.name)
        if match is not None and _shapes(match[1]) == _shapes(o_layer):
            copy(oi, o_layer, match[0], match[1], "by name")

    remaining_target = [(i, layer) for i, layer in target_layers if i not in used_target]
    position = 0
    for oi, o_layer in origin_layers:
        if oi in used_origin:
            continue
        wanted = _shapes(o_layer)
        found = None
        for k in range(position, len(remaining_target)):
            if _shapes(remaining_target[k][1]) == wanted:
                found = k
                break
        if found is None:
            report.skipped.append((oi, o_layer.name, wanted))
            continue
        ti, t_layer = remaining_target[found]
        copy(oi, o_layer, ti, t_layer, "in order")
        position = found + 1

    report.untouched = [(i, layer.name, _shapes(layer)) for i, layer in target_layers
                        if i not in used_target]
    if not report.copies:
        raise UnetslError(f"no layer of {origin_label} fits {target_label} (no equal names or "
                          "weight shapes); nothing copied")
    return report
