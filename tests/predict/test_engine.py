"""Tests for unetsl.predict.engine: tiling, window blending, equivalence with whole-image
prediction, reductions, receptive field, bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from unetsl.errors import UnetslError
from unetsl.io.arrays import ArraySink, ArraySource
from unetsl.predict.engine import predict, predict_outputs, predict_to_sinks
from unetsl.predict.reach import Reach, measure_reach, receptive_reach
from unetsl.predict.reduce import label_dtype, reduce, reduction_for_activation, reduction_name
from unetsl.predict.tiling import default_overlap, plan_tiles, window_1d

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------ model-free helpers


class BoxModel:
    """A 'network' of known behaviour: a (2r+1)^3 mean with zero padding (reach r), and
    twice it in a second channel. Whole-image result: ndimage.uniform_filter."""

    def __init__(self, patch, r=1, channels=2):
        self.patch = tuple(patch)
        self.r = r
        self.channels = [channels]
        self.calls = 0

    def size(self):
        k = 2 * self.r + 1
        return (1, 1, k if self.patch[1] > 1 else 1, k, k)

    def __call__(self, tiles):
        self.calls += 1
        out = ndimage.uniform_filter(tiles, size=self.size(), mode="constant")
        return [np.concatenate([out * (k + 1) for k in range(self.channels[0])], axis=1)]

    def whole(self, image):
        return ndimage.uniform_filter(image.astype(np.float32), size=self.size(),
                                      mode="constant")


class CountingSink(ArraySink):
    def __init__(self, shape):
        super().__init__(shape)
        self.count = np.zeros((shape[0], *shape[2:]), dtype=np.int32)

    def write(self, t, region, block):
        super().write(t, region, block)
        self.count[(t, *region)] += 1


def run_box(image, patch, r, overlap, batch_size=5, align=(2, 2, 2)):
    model = BoxModel((1, *patch), r)
    sink = CountingSink((image.shape[0], 2, *image.shape[2:]))
    plan = predict_to_sinks(model, ArraySource(image), [sink], reach=Reach((r,) * 3, align),
                            batch_size=batch_size, overlap=overlap)
    return sink, plan, model


# ------------------------------------------------------------------------------ reductions


def test_reduction_names_and_activations():
    assert [reduction_name(v) for v in (0, 1, 2, "1", "linear")] == [
        "categorical", "multiclass", "linear", "multiclass", "linear"]
    with pytest.raises(UnetslError, match="reduction type"):
        reduction_name(3)
    with pytest.raises(UnetslError):
        reduction_name(True)
    assert reduction_for_activation("sigmoid") == "multiclass"
    assert reduction_for_activation("softmax") == "categorical"
    assert reduction_for_activation("relu") == "linear"
    assert reduction_for_activation("linear") == "linear"


def test_reduce_multiclass_bits():
    p = np.zeros((1, 2, 1, 1, 4), dtype=np.float32)
    p[0, 0, 0, 0] = [0.1, 0.9, 0.1, 0.9]
    p[0, 1, 0, 0] = [0.1, 0.1, 0.9, 0.9]
    labels = reduce(p, "multiclass")
    assert labels.shape == (1, 1, 1, 1, 4) and labels.dtype == np.uint8
    assert labels.ravel().tolist() == [0, 1, 2, 3]


def test_reduce_multiclass_more_than_8_channels_is_uint16():
    p = np.zeros((10, 1, 1, 1), dtype=np.float32)
    p[9] = 1.0
    labels = reduce(p, "multiclass", channel_axis=0)
    assert labels.dtype == np.uint16 and labels.ravel().tolist() == [512]
    assert label_dtype("multiclass", 17) == np.float32  # ImageJ has no uint32


def test_reduce_categorical_background_is_last_channel():
    p = np.zeros((3, 1, 1, 3), dtype=np.float32)
    p[:, 0, 0, 0] = [0.7, 0.2, 0.1]
    p[:, 0, 0, 1] = [0.1, 0.8, 0.1]
    p[:, 0, 0, 2] = [0.1, 0.1, 0.8]
    labels = reduce(p, "categorical", channel_axis=0)
    assert labels.ravel().tolist() == [1, 2, 0]


def test_reduce_linear_keeps_values_and_channels():
    p = np.random.default_rng(0).normal(size=(2, 3, 1, 4, 4)).astype(np.float32) * 300
    out = reduce(p, "linear")
    assert out.dtype == np.float32 and out.shape == p.shape
    np.testing.assert_array_equal(out, p)


# ---------------------------------------------------------------------- windows and plans


def test_window_is_zero_on_border_and_one_at_image_edges():
    w = window_1d(32, border=4, taper=8, first=False, last=False)
    assert np.all(w[:4] == 0) and np.all(w[-4:] == 0)
    assert np.all(w[12:20] == 1) and np.all(np.diff(w[:12]) >= 0)
    np.testing.assert_allclose(w[4:12] + w[4:12][::-1], 1.0, atol=1e-6)  # smooth crossfade
    assert np.all(window_1d(32, 4, 8, first=True, last=False)[:16] == 1)
    assert np.all(window_1d(32, 4, 8, first=True, last=True) == 1)


@pytest.mark.parametrize("size", [64, 65, 100, 157, 300])
def test_plan_origins_aligned_last_flush_and_every_voxel_weighted(size):
    plan = plan_tiles((1, size, 20), (1, 64, 64), Reach((0, 5, 5), (1, 4, 4)), (0, 16, 16))
    axis = plan.axes[1]
    assert all(o % 4 == 0 for o in axis.origins)
    assert axis.origins[0] == 0
    assert 0 <= axis.origins[-1] + 64 - size < 4  # flush with the far border (< align past)
    cover = np.zeros(size)
    for origin, w in zip(axis.origins, axis.windows()):
        lo, hi = max(origin, 0), min(origin + 64, size)
        cover[lo:hi] += w[lo - origin:hi - origin]
    assert cover.min() > 0
    small = plan.axes[2]  # 20 < 64: one tile, centred, reflect-padded
    assert small.origins == (-22,) and small.border == 0


def test_default_overlap_from_receptive_field_capped_at_a_quarter():
    assert default_overlap((1, 96, 96), Reach((0, 9, 9), (1, 2, 2))) == (0, 24, 24)
    assert default_overlap((16, 64, 64), Reach((23, 23, 23), (4, 4, 4))) == (4, 16, 16)
    assert default_overlap((3, 64, 64), Reach((10, 2, 2), (1, 4, 4))) == (0, 8, 8)


# ------------------------------------------------------------------------- model-free engine


@pytest.mark.parametrize("shape, patch, overlap", [
    ((2, 1, 20, 77, 91), (8, 16, 16), (4, 8, 8)),     # streams along y, two time points
    ((1, 1, 60, 20, 24), (8, 16, 16), (4, 6, 6)),     # streams along z
    ((3, 1, 1, 150, 41), (1, 32, 32), (0, 8, 8)),     # 2D, batches span time points
])
def test_tiled_equals_whole_for_known_reach_and_every_voxel_written_once(shape, patch, overlap):
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    sink, plan, _ = run_box(image, patch, 1, overlap)
    assert np.all(sink.count == 1)
    whole = BoxModel((1, *patch), 1).whole(image)
    sl = (slice(None), slice(None)) + tuple(
        slice(None) if s == 1 else slice(0, s - 2) for s in shape[2:])  # far border: align
    np.testing.assert_allclose(sink.array[:, :1][sl], whole[sl], atol=1e-5)
    np.testing.assert_allclose(sink.array[:, 1:], 2 * sink.array[:, :1], rtol=1e-6)


def test_image_smaller_than_patch_is_padded_and_cropped():
    image = np.random.default_rng(2).random((1, 1, 3, 10, 13)).astype(np.float32)
    sink, plan, model = run_box(image, (8, 16, 16), 1, (2, 4, 4))
    assert plan.count() == 1 and model.calls == 1
    assert sink.array.shape == (1, 2, 3, 10, 13) and np.all(sink.count == 1)
    inner = model.whole(image)[..., 1:-1, 1:-1, 1:-1]
    # reflect padding differs from zero padding only within the reach of the border
    np.testing.assert_allclose(sink.array[:, :1, 1:-1, 1:-1, 1:-1], inner, atol=1e-5)


def test_source_channel_mismatch_and_bad_batch_size():
    image = np.zeros((1, 2, 4, 16, 16), dtype=np.float32)
    with pytest.raises(UnetslError, match="2 channel"):
        run_box(image, (4, 16, 16), 1, (0, 0, 0))
    with pytest.raises(UnetslError, match="batch size"):
        run_box(image[:, :1], (4, 16, 16), 1, (0, 0, 0), batch_size=0)


def test_memory_follows_tiles_not_image():
    """The accumulation buffer is one tile deep along the stream axis."""
    from unetsl.predict.engine import _RowBuffer

    plan = plan_tiles((64, 2048, 2048), (16, 64, 64), Reach((4, 4, 4), (4, 4, 4)))
    buffer = _RowBuffer(plan, [2], [None])
    assert buffer.wsum.nbytes <= 64 * 64 * 2048 * 4
    assert plan.stream_axis == 1


# --------------------------------------------------------------------------- Keras models


def _unet(patch, **kw):
    from unetsl.nets.unet import build_unet

    args = dict(n_labels=2, depth=2, n_filters=2, kernel_shape=(3, 3, 3), pooling=(1, 2, 2),
                activation="linear", spatial_dropout_rate=0.0)
    args.update(kw)
    import keras

    keras.utils.set_random_seed(3)
    return build_unet(patch, **args)


def _whole(model, image, **kw):
    """The same network built for the whole image: the reference tiles must match."""
    from unetsl.nets.shapes import from_model_layout, to_model_layout

    big = _unet((image.shape[1], *image.shape[2:]), **kw)
    big.set_weights(model.get_weights())
    return np.stack([from_model_layout(big.predict_on_batch(to_model_layout(f[None])))[0]
                     for f in image])


@pytest.fixture(scope="module")
def unet2d():
    return _unet((1, 1, 96, 96))


def test_receptive_reach_from_layers_matches_impulse(unet2d):
    computed = receptive_reach(unet2d)
    assert computed.source == "layers"
    assert computed.reach == (0, 9, 9) and computed.align == (1, 2, 2)
    measured = measure_reach(unet2d)
    assert measured.source == "impulse"
    assert measured.reach[1:] == (9, 9)


def test_receptive_reach_3d_and_default_model():
    model = _unet((1, 8, 32, 32), pooling=(2, 2, 2))
    assert receptive_reach(model).reach == (9, 9, 9)
    assert receptive_reach(model).align == (2, 2, 2)
    deep = _unet((1, 3, 64, 64), depth=3)
    assert receptive_reach(deep).reach == (10, 23, 23)  # 2D time series: 10 convs in z
    assert receptive_reach(deep).align == (1, 4, 4)


def test_tiled_equals_whole_image_2d_default_overlap(unet2d):
    image = np.random.default_rng(4).normal(50, 20, (2, 1, 1, 250, 302)).astype(np.float32)
    tiled = predict(unet2d, image, batch_size=7)
    whole = _whole(unet2d, image)
    assert tiled.shape == whole.shape == (2, 2, 1, 250, 302)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)
    # the test has teeth: tiles that do not overlap show the padding at their edges
    naive = predict(unet2d, image, batch_size=7, overlap=(0, 0, 0))
    assert np.abs(naive - whole).max() > 1e-2


def test_tiled_equals_whole_image_off_grid_size(unet2d):
    """251 x 303 is not a multiple of the pooling: the last tile reads < 2 reflected voxels;
    away from that far border the result is still the whole-image one."""
    image = np.random.default_rng(5).normal(50, 20, (1, 1, 1, 251, 303)).astype(np.float32)
    tiled = predict(unet2d, image)
    whole = _whole(unet2d, image[..., :250, :302])
    keep = (..., slice(0, 250 - 11), slice(0, 302 - 11))
    np.testing.assert_allclose(tiled[keep], whole[keep], atol=1e-4)


def test_tiled_equals_whole_image_3d():
    model = _unet((1, 32, 32, 32), pooling=(2, 2, 2), n_labels=1)
    image = np.random.default_rng(6).normal(0, 1, (1, 1, 56, 56, 56)).astype(np.float32)
    tiled = predict(model, image, overlap=(20, 20, 20), batch_size=8)
    whole = _whole(model, image, pooling=(2, 2, 2), n_labels=1)
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_constant_image_gives_constant_prediction(unet2d):
    image = np.full((1, 1, 1, 300, 280), 37.0, dtype=np.float32)
    out = predict(unet2d, image)
    inner = out[..., 10:-10, 10:-10]  # the outer border sees the zero padding
    assert np.ptp(inner, axis=(-2, -1)).max() < 1e-4


def test_predict_4d_input_and_channels(unet2d):
    image = np.random.default_rng(7).random((1, 1, 40, 50)).astype(np.float32)
    out = predict(unet2d, image)
    assert out.shape == (2, 1, 40, 50) and out.dtype == np.float32
    with pytest.raises(UnetslError, match="channel"):
        predict(unet2d, np.zeros((2, 1, 40, 50), dtype=np.float32))


def test_normalize_samples_constant_tiles_are_finite(unet2d):
    out = predict(unet2d, np.full((1, 1, 1, 100, 100), 5, dtype=np.uint16), normalize=True)
    assert np.isfinite(out).all()


def test_cascade_outputs():
    from unetsl.nets.unet import build_cascade

    model = build_cascade((1, 1, 32, 32), 2, n_labels=2, depth=2, n_filters=2,
                          spatial_dropout_rate=0.0)
    image = np.random.default_rng(8).random((1, 1, 1, 70, 50)).astype(np.float32)
    both = predict_outputs(model, image)
    assert len(both) == 2 and both[0].shape == (1, 2, 1, 70, 50)
    np.testing.assert_allclose(predict(model, image, output_index=0), both[0], atol=1e-6)
    np.testing.assert_allclose(predict(model, image), both[1], atol=1e-6)
    assert receptive_reach(model).reach[1] == 18  # stage 2 sees stage 1's output
    with pytest.raises(UnetslError, match="out of range"):
        predict(model, image, output_index=2)


# ------------------------------------------------------------------------- bounded memory

_BIG_SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from scipy import ndimage
    from unetsl.io.lazy import OutputTiff, open_image
    from unetsl.predict.reach import Reach
    from unetsl.predict.engine import predict_to_sinks

    class Box:
        patch = (1, 1, 256, 256)
        channels = [1]
        def __call__(self, tiles):
            return [ndimage.uniform_filter(tiles, size=(1, 1, 1, 3, 3), mode="constant")]

    def vm(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    src, dst, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])
    limit = vm("VmPeak") + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    image = open_image(src)
    with OutputTiff(dst, image.shape, np.float32, spacing=image.spacing,
                    unit=image.unit) as out:
        predict_to_sinks(Box(), image.data, [out], reach=Reach((0, 1, 1), (1, 1, 1)),
                         batch_size=8, overlap=(0, 16, 16))
    print("limit", limit, "peak", vm("VmPeak"))
""")


def test_image_larger_than_address_space_limit(tmp_path):
    """Address space is capped (RLIMIT_AS) to 160 MB above what the interpreter already
    uses; the image as float32 is 268 MB and so is the output file. Model-free (a numpy
    box filter stands in for the network) because TensorFlow reserves gigabytes of
    address space at import; the Keras path is the same engine (see the slow RSS test)."""
    import tifffile

    side = 8192
    src, dst = tmp_path / "big.tif", tmp_path / "out.tif"
    rows = (np.arange(side, dtype=np.uint32)[:, None] * 7 + np.arange(side)[None] * 3) % 251
    tifffile.imwrite(src, rows.astype(np.uint8)[None], imagej=True,
                     resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "micron"})
    del rows
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", _BIG_SCRIPT, str(src), str(dst),
                             str(160 * 2**20)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert side * side * 4 > 160 * 2**20
    out = tifffile.memmap(dst, mode="r")
    assert out.shape == (side, side) and out.dtype == np.float32
    img = tifffile.memmap(src, mode="r")
    for y, x in [(0, 0), (3000, 5000), (8000, 8100), (4090, 239)]:
        block = np.asarray(img[max(y - 1, 0):y + 65, max(x - 1, 0):x + 65], np.float32)
        ref = ndimage.uniform_filter(block, 3, mode="constant")
        oy, ox = y - max(y - 1, 0), x - max(x - 1, 0)
        got = np.asarray(out[y + 1:y + 63, x + 1:x + 63])
        np.testing.assert_allclose(got[:min(62, side - y - 2), :min(62, side - x - 2)],
                                   ref[oy + 1:oy + 63, ox + 1:ox + 63][
                                       :min(62, side - y - 2), :min(62, side - x - 2)],
                                   atol=1e-4)
    with tifffile.TiffFile(dst) as tif:
        assert tif.imagej_metadata["unit"] == "micron"


def test_low_resolution_head_is_upsampled_like_the_original_shaper():
    import keras

    inputs = keras.Input((1, 32, 32, 1))
    x = keras.layers.Conv3D(2, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling3D((1, 2, 2))(x)
    half = keras.layers.Conv3D(1, 1, activation="sigmoid", name="half")(x)
    model = keras.Model(inputs, half)
    assert receptive_reach(model).reach == (1, 2, 2)
    image = np.random.default_rng(9).random((1, 1, 1, 50, 40)).astype(np.float32)
    out = predict(model, image, overlap=(0, 0, 0))
    assert out.shape == (1, 1, 1, 50, 40)
    block = out[0, 0, 0, :32, :32]  # the first tile: 2 x 2 blocks of one value
    np.testing.assert_array_equal(block[::2, ::2], block[1::2, 1::2])


# ------------------------------------------------------------- tiles larger than the patch


def test_model_rebuilt_for_a_larger_patch_shares_weights_and_values():
    from unetsl.nets.model_files import with_input_patch

    for patch, pooling in (((1, 1, 32, 32), (1, 2, 2)), ((1, 8, 16, 16), (2, 2, 2))):
        model = _unet(patch, pooling=pooling)
        z = 1 if patch[1] == 1 else patch[1] * 2
        big = with_input_patch(model, (z, 64, 48))
        assert tuple(big.inputs[0].shape)[1:4] == (z, 64, 48)
        assert tuple(big.outputs[0].shape)[1:4] == (z, 64, 48)
        assert all(a is b for a, b in zip(big.weights, model.weights))  # shared, not copied
        x = np.random.default_rng(0).normal(size=(1, z, 64, 48, 1))
        r = receptive_reach(model).reach
        z0 = 0 if patch[1] == 1 else patch[1] // 2
        small = model.predict_on_batch(x[:, z0:z0 + patch[1], 16:16 + patch[2], 8:8 + patch[3]])
        inner = (slice(None), slice(r[0], patch[1] - r[0]) if patch[1] > 1 else slice(None),
                 slice(r[1], patch[2] - r[1]), slice(r[2], patch[3] - r[2]))
        whole = np.asarray(big.predict_on_batch(x))
        part = whole[:, z0:z0 + patch[1], 16:16 + patch[2], 8:8 + patch[3]]
        np.testing.assert_allclose(part[inner], np.asarray(small)[inner], atol=1e-5)
    with pytest.raises(UnetslError, match="Reshape"):  # a 2-D U-Net stays 2-D
        with_input_patch(_unet((1, 1, 32, 32)), (2, 32, 32))


def test_model_with_dense_layer_cannot_be_resized_and_keeps_its_patch():
    import keras

    from unetsl.nets.model_files import with_input_patch
    from unetsl.predict.tiling import model_for_tiles

    inputs = keras.Input((1, 8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(64)(x)
    model = keras.Model(inputs, keras.layers.Reshape((1, 8, 8, 1))(x))
    with pytest.raises(UnetslError, match="depends on the input size"):
        with_input_patch(model, (1, 16, 16))
    reach = Reach((0, 8, 8), (1, 1, 1))
    same, per_batch = model_for_tiles(model, (1, 64, 64), batch_size=4, reach=reach)
    assert same is model and per_batch == 4
    with pytest.raises(UnetslError):
        model_for_tiles(model, (1, 64, 64), batch_size=4, reach=reach, tile=(1, 16, 16))


def test_choose_tile_computes_fewer_voxels_within_the_memory_budget():
    from unetsl.predict.tiling import choose_tile

    reach = Reach((10, 23, 23), (1, 4, 4))  # the default 3D model
    patch, shape = (16, 64, 64), (64, 256, 256)
    budget = 16 * int(np.prod(patch))
    tile = choose_tile(shape, patch, reach, budget=budget)
    assert int(np.prod(tile)) <= budget
    voxels = plan_tiles(shape, tile, reach).count() * int(np.prod(tile))
    assert voxels < 0.7 * plan_tiles(shape, patch, reach).count() * int(np.prod(patch))
    # a 2-D model keeps z; an image smaller than the patch keeps the patch
    reach2 = Reach((0, 23, 23), (1, 4, 4))
    tile2 = choose_tile((1, 3000, 3000), (1, 64, 64), reach2, budget=16 * 64 * 64,
                        fixed=(True, False, False))
    assert tile2[0] == 1 and tile2[1] * tile2[2] <= 16 * 64 * 64
    assert all(a.border >= 23 for a in plan_tiles((1, 3000, 3000), tile2, reach2).axes[1:])
    assert choose_tile((1, 40, 40), (1, 64, 64), reach2, budget=10**6) == (1, 64, 64)


def test_default_tiles_make_a_deep_model_exact():
    """A depth-3 U-Net reaches 23 px, more than a quarter of its 64 px patch: its patch
    tiles are blended, not exact; the larger tiles chosen by default are exact."""
    model = _unet((1, 1, 64, 64), depth=3)
    image = np.random.default_rng(5).normal(size=(1, 1, 1, 300, 400)).astype(np.float32)
    whole = _whole(model, image, depth=3)
    auto = predict(model, image)  # 3 tiles of 300x192
    np.testing.assert_allclose(auto, whole, atol=1e-4)
    patch_tiles = predict(model, image, tile=(1, 64, 64))
    assert np.abs(patch_tiles - whole).max() > 1e-3


def test_tiles_grow_only_where_the_patch_covers_the_receptive_field():
    """A 2-D time-series U-Net sees 3 frames but reaches 10 frames in z: it was trained on
    outputs that all saw the zero padding in z, so its tiles keep 3 frames (as the original)."""
    from unetsl.nets.shapes import model_patch_shape
    from unetsl.predict.tiling import model_for_tiles

    model = _unet((1, 3, 64, 64), depth=3)
    tiled, _ = model_for_tiles(model, (5, 300, 400), batch_size=16)
    assert model_patch_shape(tiled)[1] == 3 and model_patch_shape(tiled)[2:] != (64, 64)


def test_multi_head_model_with_a_list_input_is_rebuilt_for_larger_tiles():
    from unetsl.config.model_config import Config
    from unetsl.nets.model_files import with_input_patch
    from unetsl.nets.unet import build_model

    model = build_model(Config.load(REPO / "examples" / "cerberus.json"))
    big = with_input_patch(model, (3, 128, 192))
    assert [tuple(o.shape)[1:] for o in big.outputs] == [
        (3, 128, 192, 1), (3, 64, 96, 2), (3, 128, 192, 2)]  # the scale head stays at half


@pytest.mark.parametrize("tile_z", [2, 5])  # tiles stream along z, or along y
def test_progress_counts_the_frames_of_a_time_series_read_as_depth(tile_z):
    """A 5-frame 2D movie is one (t=1) volume of depth 5 for the network: progress says
    5 frames, each done once all its rows are written, never "1/1"."""
    image = np.random.default_rng(0).random((1, 1, 5, 24, 24), dtype=np.float32)
    calls = []
    predict_to_sinks(BoxModel((1, tile_z, 8, 8), r=0), ArraySource(image),
                     [ArraySink((1, 2, 5, 24, 24))], reach=Reach((0, 0, 0), (1, 1, 1)),
                     batch_size=2, overlap=(0, 0, 0), frames_as_depth=True,
                     progress=lambda *args: calls.append(args))
    assert {c[3] for c in calls} == {5}  # frames total
    done = [c[2] for c in calls]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 5
    assert calls[0][0] == 0 and calls[-1][0] == calls[-1][1]  # starts at 0 tiles, ends at all
    if tile_z == 2:  # rows along z finish frames on the way
        assert 0 < done[len(done) // 2] < 5
    plain = []
    predict_to_sinks(BoxModel((1, tile_z, 8, 8), r=0), ArraySource(image),
                     [ArraySink((1, 2, 5, 24, 24))], reach=Reach((0, 0, 0), (1, 1, 1)),
                     overlap=(0, 0, 0), progress=lambda *args: plain.append(args))
    assert plain[-1][2:] == (1, 1)  # a 3D stack is one time point
