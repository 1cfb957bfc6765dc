"""Frame intervals of time-lapse movies: carried in seconds, converted at the file's edge.

Why: users record movies whose frame interval (e.g. 60 s) Fiji shows from ImageJ's
``finterval``/``tunit``, OME-TIFF stores as Pixels ``TimeIncrement``/``TimeIncrementUnit`` and
OME-Zarr as the scale of its "t" axis with a time unit; every output of a movie should keep
it. unetsl holds it as one number of seconds (None: unknown) and each reader and writer
converts from and to its format's unit here.
"""

from __future__ import annotations

import math
from typing import Any

from unetsl.errors import UnetslError

__all__ = ["IMAGEJ_TIME_UNIT", "NGFF_TIME_UNIT", "OME_TIME_UNIT", "check_interval",
           "imagej_interval", "ngff_interval", "ome_interval", "to_seconds"]

IMAGEJ_TIME_UNIT = "sec"  # ImageJ's default tunit, what Fiji shows as "sec"
OME_TIME_UNIT = "s"  # OME's UnitsTime symbol (and the default of TimeIncrementUnit)
NGFF_TIME_UNIT = "second"  # the UDUNITS-2 name NGFF asks for

_MINUTE, _HOUR = 60.0, 3600.0
# the spellings of ImageJ (free text), OME (UnitsTime symbols) and NGFF (UDUNITS-2 names)
_SECONDS_PER_UNIT = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("ms", "msec", "msecs", "millisecond", "milliseconds"), 1e-3),
    **dict.fromkeys(("µs", "μs", "us", "usec", "microsecond", "microseconds"), 1e-6),
    **dict.fromkeys(("ns", "nsec", "nanosecond", "nanoseconds"), 1e-9),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), _MINUTE),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), _HOUR),
    **dict.fromkeys(("d", "day", "days"), 24 * _HOUR),
}


def _positive(value: Any) -> float | None:
    """A positive finite float, or None (0 is how ImageJ says "no interval")."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def to_seconds(value: Any, unit: str | None) -> float | None:
    """``value`` in ``unit`` as seconds; None for an unknown unit or a value that is not a
    positive number, so that a wrong interval is never invented."""
    if not isinstance(unit, str):
        return None
    factor = _SECONDS_PER_UNIT.get(unit.strip()) or _SECONDS_PER_UNIT.get(unit.strip().lower())
    interval = _positive(value)
    return interval * factor if factor is not None and interval is not None else None


def imagej_interval(finterval: Any, tunit: str | None) -> float | None:
    """Seconds of ImageJ's ``finterval`` (given in ``tunit``; None when absent)."""
    if tunit is None:
        # ImageJ leaves tunit out when it is its default, "sec"; a tunit we do not know is
        # not guessed (None) rather than read as seconds.
        return _positive(finterval)
    return to_seconds(finterval, tunit)


def ome_interval(pixels: dict) -> float | None:
    """Seconds of an OME Pixels' ``TimeIncrement`` in ``TimeIncrementUnit`` (OME's default: s)."""
    if "TimeIncrement" not in pixels:
        return None
    return to_seconds(pixels["TimeIncrement"], str(pixels.get("TimeIncrementUnit",
                                                              OME_TIME_UNIT)))


def ngff_interval(scale: Any, unit: Any) -> float | None:
    """Seconds of an OME-Zarr "t" axis' scale; None unless its unit is a time unit (a scale
    without a unit says nothing about time)."""
    return to_seconds(scale, unit) if isinstance(unit, str) else None


def check_interval(value: Any, path: Any) -> float | None:
    """The frame interval a writer is given, in seconds: None, or a positive finite number
    (else a one-line UnetslError naming ``path``)."""
    if value is None:
        return None
    interval = _positive(value)
    if interval is None:
        raise UnetslError(f"{path}: frame interval must be a positive number of seconds, "
                          f"got {value!r}")
    return interval
