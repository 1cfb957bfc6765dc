"""Scores of a prediction against true labels (pixel, tolerant skeleton, cells) and overlays."""
