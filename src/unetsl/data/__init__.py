"""Training data: sources and file pairing, volumes, patch sampling, augmentation,
normalisation, labellers and per-head targets, the Keras dataset; attach/inspect logic and
the synthetic epithelium."""
