"""unetsl: U-Nets as pixel-wise classifiers for 2D, 2D+time and 3D microscopy."""

__version__ = "0.2.0"
