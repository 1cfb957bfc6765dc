"""The napari plugin (npe2 manifest napari.yaml): a front end beside unetsl.cli, on the
same library; nothing in the library imports it."""
