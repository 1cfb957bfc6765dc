"""Image files in and out as (t, c, z, y, x) with their pixel size: TIFF, zarr/OME-Zarr,
lazy block readers and writers, in-memory sources and sinks."""
