"""Tunables of cell segmentation and tracking, with the user-facing config keys that set them.

Every number the cells package uses lives here so that a notebook user can see and change all
of them in one place, and so that a JSON config (keys lowercase with spaces, like the rest of
unetsl) can override them through :meth:`CellSettings.from_overrides`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from typing import Any

from unetsl.errors import UnetslError

MODES = ("membrane", "foreground")


@dataclass(frozen=True)
class CellSettings:
    """Cell segmentation/tracking parameters; defaults tuned on the synthetic epithelium.

    Sizes in pixels/voxels are counted in the array because they guard against pixel-level
    noise. Distances and sigmas are in in-plane pixels, with a z step as long as the spacing
    says (z spacing / xy spacing), so anisotropic stacks behave like their isotropic
    resampling and the defaults do not depend on the microscope's pixel size.
    """

    mode: str = "membrane"
    #: membrane mode: probability at or above which a pixel is membrane; foreground mode:
    #: probability at or above which a pixel belongs to an object.
    threshold: float = 0.5
    #: membrane mode, time series: frames (odd) over which the membrane probability is
    #: max-pooled before segmenting, so a membrane the network missed in one frame is taken
    #: from its neighbours (cells move little between frames). 1 = each frame on its own.
    time_window: int = 3
    #: Gaussian sigma (in-plane pixels) smoothing the distance map before seed detection.
    seed_sigma: float = 1.0
    #: h-maxima height (in-plane pixels of distance): a distance peak must rise this much above
    #: the saddle to its neighbour to seed its own cell. Larger merges more; smaller splits more.
    seed_height: float = 0.5
    #: weight of the (normalised) distance in the flooding landscape, relative to the membrane
    #: probability; it places boundaries at the narrowest point where a membrane has a gap.
    distance_weight: float = 0.5
    #: cells smaller than this many pixels (2D) or voxels (3D) are merged into a neighbour.
    min_size: int = 8
    #: foreground mode: the channel of the probability file that holds the objects' boundary
    #: (a model trained with "instance labels": channel 0 foreground, 1 boundary), whose
    #: interiors seed one object each; None = channel 1 of a 2-channel file when the
    #: foreground is channel 0, -1 = none (seeds from the distance transform).
    boundary_channel: int | None = None
    #: neighbouring cells whose shared border has a mean membrane probability below this are
    #: merged, weakest first (0 disables merging). Mends a cell split by two seeds, where no
    #: membrane divides it. The mean leaves out the border's rim, where third cells' membranes
    #: run in (``segment.BORDER_RIM``), so one threshold fits 2D and 3D: 0.3 raised F1 on every
    #: frame of the trained demo model's output and on the 3D stacks of benchmarks/cells.py
    #: (0.4 scored lower on both).
    merge_threshold: float = 0.3
    #: smallest overlap (intersection over union) for a cell to keep its id in the next frame.
    track_min_overlap: float = 0.3
    #: frames a cell may be missing (e.g. merged with a neighbour) and still get its id back.
    track_max_gap: int = 2
    #: a daughter must lie at least this fraction inside its parent's previous region.
    division_min_overlap: float = 0.6
    #: each daughter must be between this fraction and 1 minus it of its parent's size.
    division_min_fraction: float = 0.25
    #: a frame with more voxels is segmented block by block (``cells.blocks``), each block
    #: padded by the halo at most this size: segmenting needs about 150 bytes per voxel, so
    #: 8 M voxels keep a run near 1.1 GB whatever the frame's size (benchmarks/cells_scale.py).
    block_voxels: int = 8_000_000
    #: overlap (in-plane pixels) around each block: a cell cut by a block face is seen whole
    #: within it by both blocks, which then agree on it; at least a cell's radius.
    block_halo: float = 16.0

    def __post_init__(self) -> None:
        for key, (field, _) in CELL_KEYS.items():
            _check(key, field, getattr(self, field))

    @classmethod
    def from_overrides(cls, overrides: dict[str, Any] | None) -> CellSettings:
        """Defaults with config keys (``CELL_KEYS``) overridden; a bad key/value names the key."""
        values: dict[str, Any] = {}
        for key, value in (overrides or {}).items():
            if key not in CELL_KEYS:
                close = difflib.get_close_matches(key, CELL_KEYS, n=1)
                hint = (f'did you mean "{close[0]}"?' if close
                        else "known keys: " + ", ".join(sorted(CELL_KEYS)))
                raise UnetslError(f"unknown cell setting {key!r}; {hint}")
            field = CELL_KEYS[key][0]
            values[field] = _coerce(key, field, value)
        return cls(**values)

    def to_config(self) -> dict[str, Any]:
        """The settings as config keys, e.g. to save beside the results."""
        return {key: getattr(self, field) for key, (field, _) in CELL_KEYS.items()}


#: config key -> (CellSettings field, one-line description)
CELL_KEYS: dict[str, tuple[str, str]] = {
    "cell mode": ("mode", "'membrane' (membrane probability) or 'foreground' (nuclei)"),
    "cell threshold": ("threshold", "probability at or above which a pixel is membrane/object"),
    "cell time window": ("time_window", "frames max-pooled to fill missed membranes (1 = off)"),
    "cell seed sigma": ("seed_sigma", "smoothing of the distance map before seeding (pixels)"),
    "cell seed height": ("seed_height", "h-maxima height of a seed peak (pixels of distance)"),
    "cell distance weight": ("distance_weight", "weight of distance vs membrane when flooding"),
    "cell min size": ("min_size", "smallest cell in pixels (2D) or voxels (3D); smaller merge"),
    "cell boundary channel": ("boundary_channel",
                              "foreground mode: channel of the object boundary (instance labels "
                              "model) whose interiors seed the objects; null = channel 1 of a "
                              "2-channel map, -1 = none"),
    "cell merge threshold": ("merge_threshold",
                             "merge neighbours whose border mean probability is below (0 = off)"),
    "cell track min overlap": ("track_min_overlap", "smallest IoU to keep a cell's id"),
    "cell track max gap": ("track_max_gap", "frames a cell may be missing and keep its id"),
    "cell division min overlap": ("division_min_overlap",
                                  "fraction of a daughter inside its parent's previous region"),
    "cell division min fraction": ("division_min_fraction",
                                   "daughter size bounds f..1-f as fractions of the parent"),
    "cell block voxels": ("block_voxels",
                          "frames with more voxels are segmented block by block (memory: about "
                          "150 bytes per voxel of one block)"),
    "cell block halo": ("block_halo", "overlap around each block (in-plane pixels), at least a "
                                      "cell's radius"),
}

#: fields that may be None (chosen from the data)
OPTIONAL = ("boundary_channel",)

# field -> (type, low, high, low inclusive)
_RANGES: dict[str, tuple[type, float, float, bool]] = {
    "threshold": (float, 0.0, 1.0, False),
    "time_window": (int, 1, float("inf"), True),
    "seed_sigma": (float, 0.0, float("inf"), True),
    "seed_height": (float, 0.0, float("inf"), True),
    "distance_weight": (float, 0.0, float("inf"), True),
    "min_size": (int, 0, float("inf"), True),
    "boundary_channel": (int, -1, float("inf"), True),
    "merge_threshold": (float, 0.0, 1.0, True),
    "track_min_overlap": (float, 0.0, 1.0, False),
    "track_max_gap": (int, 0, float("inf"), True),
    "division_min_overlap": (float, 0.0, 1.0, False),
    "division_min_fraction": (float, 0.0, 0.5, True),
    "block_voxels": (int, 4096, float("inf"), True),
    "block_halo": (float, 1.0, float("inf"), True),
}


def _coerce(key: str, field: str, value: Any) -> Any:
    if field == "mode" or (field in OPTIONAL and value is None):
        return value
    kind = _RANGES[field][0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnetslError(f"cell setting {key!r} must be a number, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise UnetslError(f"cell setting {key!r} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def check_mode(mode: Any, key: str = "cell mode") -> str:
    """``mode`` when it is one of MODES, else a one-line error naming the setting: the one
    check of the cell mode for the library, the CLI and napari."""
    if mode not in MODES:
        raise UnetslError(f'"{key}" must be one of {", ".join(MODES)}, got {mode!r}')
    return mode


def _check(key: str, field: str, value: Any) -> None:
    if field == "mode":
        check_mode(value, key)
        return
    if field in OPTIONAL and value is None:
        return
    kind, low, high, inclusive = _RANGES[field]
    if field == "time_window" and isinstance(value, int) and value % 2 == 0:
        raise UnetslError(f"cell setting {key!r} must be odd (centred on the frame), got {value}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise UnetslError(f"cell setting {key!r} must be a number, got {value!r}")
    if kind is int and not float(value).is_integer():
        raise UnetslError(f"cell setting {key!r} must be a whole number, got {value!r}")
    above = value >= low if inclusive else value > low
    if not (above and value <= high):
        bracket = "[" if inclusive else "("
        raise UnetslError(f"cell setting {key!r} = {value!r} must be in {bracket}{low}, {high}]")


def field_names() -> list[str]:
    """Names of all CellSettings fields (for notebooks listing the tunables)."""
    return [f.name for f in dataclasses.fields(CellSettings)]


def cell_key_table_markdown() -> str:
    """The README's table of cell keys, generated from ``CELL_KEYS`` and the defaults."""
    defaults = CellSettings()
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for key, (field, doc) in CELL_KEYS.items():
        rows.append(f"| `{key}` | `{json.dumps(getattr(defaults, field))}` | {doc} |")
    return "\n".join(rows)
