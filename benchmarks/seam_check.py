"""Render predicted slices to PNG to look for tile seams (2D time series and 3D stack).

For each case: the input slice, unetsl's tiled prediction (channel 0), and its absolute
difference to the same network run on the whole image at once (the network rebuilt at the
image size with the same weights), with the tile grid drawn over it. Seams would show as
lines in the prediction and as a grid in the difference.

    .venv/bin/python benchmarks/seam_check.py [--weights trained.weights.h5] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def whole_image(model_args: dict, model, image: np.ndarray) -> np.ndarray:
    from unetsl.nets.shapes import from_model_layout, to_model_layout
    from unetsl.nets.unet import build_unet

    big = build_unet((image.shape[1], *image.shape[2:]), **model_args)
    big.set_weights(model.get_weights())
    return np.stack([from_model_layout(big.predict_on_batch(to_model_layout(f[None])))[0]
                     for f in image])


def render(path: Path, title: str, panels: list[tuple[str, np.ndarray]], grid=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 5.2))
    for ax, (name, img) in zip(axes, panels):
        shown = ax.imshow(img, cmap="magma" if "diff" in name else "gray",
                          interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
        if grid is not None and "diff" in name:
            rows, cols = grid
            for r in rows:
                ax.axhline(r - 0.5, color="cyan", lw=0.4, alpha=0.6)
            for c in cols:
                ax.axvline(c - 0.5, color="cyan", lw=0.4, alpha=0.6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def tile_edges(axis) -> list[int]:
    edges = set()
    for o in axis.origins:
        edges.update({max(o, 0), min(o + axis.patch, axis.size)})
    return sorted(edges - {0, axis.size})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--weights2d", type=Path, help="weights for the 2D model (optional)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import keras

    from unetsl.data.synthetic import epithelium_stack, epithelium_time_series
    from unetsl.nets.shapes import model_patch_shape
    from unetsl.nets.unet import build_unet
    from unetsl.predict.engine import predict
    from unetsl.predict.reach import receptive_reach
    from unetsl.predict.tiling import model_for_tiles, plan_tiles

    keras.utils.set_random_seed(0)
    cases = [
        ("2d-time-series", dict(n_labels=2, depth=3, n_filters=8, pooling=(1, 2, 2),
                                spatial_dropout_rate=0.0), (1, 3, 64, 64),
         epithelium_time_series((5, 300, 400), seed=3).image[:, None, None], args.weights2d),
        ("3d-stack", dict(n_labels=2, depth=3, n_filters=8, pooling=(2, 2, 2),
                          spatial_dropout_rate=0.0), (1, 16, 64, 64),
         epithelium_stack((40, 152, 168), seed=4).image[None, None], None),
    ]
    for name, model_args, patch, image, weights in cases:
        model = build_unet(patch, **model_args)
        if weights is not None:
            model.load_weights(weights)
        if name.startswith("2d"):  # a 2D time series is predicted with time as z
            image = np.swapaxes(image, 0, 2)
        image = image.astype(np.float32)
        image = (image - image.mean()) / image.std()
        tiled = predict(model, image)
        reach = receptive_reach(model)
        tile_net, _ = model_for_tiles(model, image.shape[2:], batch_size=16, reach=reach)
        plan = plan_tiles(image.shape[2:], model_patch_shape(tile_net)[1:], reach)
        if name.startswith("2d"):
            # The network sees 3 frames: compare frame 1 with the whole-xy prediction of
            # frames 0-2, the only z tile that covers it, so that only xy tiling differs.
            z = 1
            whole = whole_image(model_args, model, image[:, :, 0:3])
            diff = np.abs(tiled[:, :, 0:3] - whole)
        else:
            z = image.shape[2] // 2
            whole = whole_image(model_args, model, image)
            diff = np.abs(tiled - whole)
        shown = diff[:, :, z] if name.startswith("2d") else diff
        flips = float(np.mean((tiled[:, :, z] > 0.5) != (whole[:, :, z] > 0.5)))
        title = (f"{name}: image {image.shape[2:]}, patch {patch[1:]}, {plan.count()} tiles, "
                 f"overlap {plan.overlap}, reach {reach.reach}; max |tiled - whole| "
                 f"{shown.max():.2e}, labels differ at {100 * flips:.3f}% of slice z={z} "
                 f"({'trained' if weights else 'untrained'} weights)")
        panels = [(f"input z={z}", image[0, 0, z]), ("tiled prediction, channel 0",
                                                     tiled[0, 0, z]),
                  ("|tiled - whole image| diff", diff[0, 0, z])]
        render(args.out / f"seams-{name}.png", title, panels,
               (tile_edges(plan.axes[1]), tile_edges(plan.axes[2])))
        if name.startswith("3d"):
            y = image.shape[3] // 2
            panels = [(f"input xz at y={y}", image[0, 0, :, y]),
                      ("tiled prediction xz, channel 0", tiled[0, 0, :, y]),
                      ("|tiled - whole image| diff xz", diff[0, 0, :, y])]
            render(args.out / f"seams-{name}-xz.png", title, panels,
                   (tile_edges(plan.axes[0]), tile_edges(plan.axes[2])))
        print(title)


if __name__ == "__main__":
    main()
