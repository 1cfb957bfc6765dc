"""Training: setup checks and compile, the fit/resume/interrupt loop, checkpoints, the
original's logs, callbacks, metrics and multi-worker runs."""
