"""What machine a benchmark ran on, in one line, for every script's table and JSON.

Imported by the benchmark scripts (``from machine import cpu_model``; each is run as
``python benchmarks/<name>.py``, so this folder is on ``sys.path``).
"""

from __future__ import annotations

import platform
from pathlib import Path

#: instruction sets that decide how fast a U-Net runs, in the order they are named
SPEED_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_model() -> str:
    """The CPU from /proc/cpuinfo: name, family/model (a hypervisor often shortens the name,
    e.g. "AMD EPYC"), clock, widest SIMD and the bfloat16 flags it has; the platform string
    elsewhere."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "processor" and fields:
                break
            fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    simd = next((f for f in ("avx512f", "avx2", "avx", "neon") if f in flags), "no AVX")
    extra = "".join(f", {f}" for f in SPEED_FLAGS if f in flags)
    mhz = float(fields.get("cpu MHz", 0) or 0)
    return (f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')}, model "
            f"{fields.get('model', '?')}, {mhz:.0f} MHz, {simd}{extra})")
