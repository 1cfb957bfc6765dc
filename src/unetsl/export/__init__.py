"""Export of trained models as bioimage.io packages."""
