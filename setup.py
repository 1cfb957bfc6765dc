"""Installs the unetsl package and its console scripts."""

from setuptools import find_packages, setup

SCRIPTS = {
    "create_model": "unetsl.cli.create_model:main",
    "predict_image": "unetsl.cli.predict_image:main",
    "train_model": "unetsl.cli.train_model:main",
    "evaluate_prediction": "unetsl.cli.evaluate_prediction:main",
    "segment_cells": "unetsl.cli.segment_cells:main",
    "attach_data_sources": "unetsl.cli.attach_data_sources:main",
    "inspect_data_sources": "unetsl.cli.inspect_data_sources:main",
    "transfer_weights": "unetsl.cli.transfer_weights:main",
    "export_model": "unetsl.cli.export_model:main",
    "cerberus": "unetsl.cli.cerberus:main",
}

# The napari plugin (unetsl.napari): a Qt front end, kept out of the core install
NAPARI = ["napari>=0.5", "magicgui", "qtpy", "PyQt6"]  # PyQt5: deprecated by napari

# Big images and clusters: Dask prediction (--dask), Slurm worker jobs (OME-Zarr is core)
SCALE = [
    "dask[array,distributed]>=2024.8",
    "dask-jobqueue>=0.8.5",
]

setup(
    name="unetsl",
    version="0.2.0",
    description="U-Nets as pixel-wise classifiers for 2D, 2D+time and 3D microscopy images",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.3",
        "numpy>=1.26",
        "scipy>=1.11",
        "scikit-image>=0.22",
        "tifffile>=2023.7.10",
        "imagecodecs>=2023.1.23",
        "click>=8.1",
        "urwid>=2.4",
        "matplotlib>=3.7",
        "h5py>=3.9",
        "tqdm>=4.65",
        "zarr>=3.0; python_version >= '3.11'",  # lazy reading of compressed TIFF, zarr
        # OME-Zarr: NGFF metadata written by ome-zarr (0.17: axes_units), read and validated
        # by ome-zarr-models; ome-zarr wants Python > 3.11 (3.11.1 on)
        "ome-zarr>=0.17; python_full_version >= '3.11.1'",
        "ome-zarr-models>=1.0; python_full_version >= '3.11.1'",
        "roifile>=2024.1.10",  # ImageJ ROI sets of cell outlines
        "trimesh>=4.0",  # cell meshes (PLY/STL/OBJ)
        "pyyaml>=6.0",
    ],
    extras_require={
        "test": ["pytest>=7.4", "pytest-xdist>=3.5", "hypothesis>=6.80", "ruff>=0.4",
                 "bioimageio.spec>=0.5.12",
                 "py-ctcmetrics>=1.3",  # the Cell Tracking Challenge's validity check
                 *SCALE],
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        "bioimageio": ["bioimageio.spec>=0.5.12"],
        "scale": SCALE,
        "napari": NAPARI,
    },
    package_data={"unetsl.napari": ["napari.yaml"]},
    entry_points={"console_scripts": [f"{k}={v}" for k, v in SCRIPTS.items()],
                  "napari.manifest": ["unetsl = unetsl.napari:napari.yaml"]},
)
