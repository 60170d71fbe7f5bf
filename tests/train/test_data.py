"""The training sample path: JPEGs decoded at a reduced scale keep the crop geometry of a full decode, the
few-pass augmentation equals a plain float64 implementation of the recipe, and a sample is a pure function of
(seed, epoch, row) whichever samples were made before it and in whichever process."""
import base64
import pickle

import cv2
import numpy as np
import pytest

from ernievil2.data.images import decode_image, decode_image_reduced
from ernievil2.data.row_index import RowIndex
from ernievil2.data.transforms import (
    AUGMENT_OPTIONS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LUMA_WEIGHTS,
    augment_resized,
    augment_train,
    resize_reduced,
    resize_short_side,
)
from ernievil2.train.data import MultiViewDataset


def blob_jpeg(width, height, centre, quality=95):
    """A smooth bright disc on a gradient: its centroid locates the geometry to a small fraction of a pixel."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    radius = min(width, height) / 10
    disc = 200 * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * radius ** 2))
    image = np.stack([disc + 20 + 0.05 * xx, disc + 30, disc + 10 + 0.05 * yy], axis=-1)
    ok, data = cv2.imencode(".jpg", np.clip(image, 0, 255).astype(np.uint8)[..., ::-1],
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def centroid(rgb):
    weight = np.clip(rgb[..., 1].astype(np.float64) - 60, 0, None)  # the disc only, not the background
    yy, xx = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]]
    return np.array([(weight * xx).sum(), (weight * yy).sum()]) / weight.sum()


@pytest.mark.parametrize("width, height, reduction", [(640, 480, 2), (1000, 900, 4), (481, 1203, 2), (2000, 1800, 8),
                                                      (447, 600, 1)])
def test_reduced_decode_keeps_the_geometry_of_the_full_decode(width, height, reduction):
    data = blob_jpeg(width, height, centre=(width * 0.37, height * 0.61))
    rgb, got_reduction, full_shape = decode_image_reduced(data, 224)
    assert got_reduction == reduction and full_shape == (height, width)
    assert rgb.shape[:2] == (-(-height // reduction), -(-width // reduction))
    reduced = resize_reduced(rgb, reduction, full_shape, 224)
    full = resize_short_side(decode_image(data), 224)
    assert reduced.shape == full.shape and reduced.dtype == np.uint8
    # An error of half a source pixel in the mapping would move the disc by 0.5 / scale >= 0.06 resized pixels
    # (scale <= 8.1 here); block averaging and bilinear sampling of a symmetric disc keep its centroid far closer.
    assert np.abs(centroid(reduced) - centroid(full)).max() < 0.03
    # Same pixels up to the resampling filter: a smooth image differs by a few levels at most.
    assert np.abs(reduced.astype(int) - full.astype(int)).mean() < 1.5


def test_reduced_decode_falls_back_and_fails_like_the_full_decode():
    png = cv2.imencode(".png", np.full((500, 700, 3), 90, np.uint8))[1].tobytes()
    rgb, reduction, shape = decode_image_reduced(png, 224)
    assert reduction == 1 and shape == (500, 700) and np.array_equal(rgb, decode_image(png))
    jpeg = blob_jpeg(640, 480, (100, 100))
    with pytest.raises(ValueError, match="over the limit of 1000"):
        decode_image_reduced(jpeg, 224, max_pixels=1000)
    truncated = jpeg[:400]  # headers only: the reduced decoder gives up, and the full decode names the problem
    with pytest.raises(ValueError) as reduced_error:
        decode_image_reduced(truncated, 224)
    with pytest.raises(ValueError) as full_error:
        decode_image(truncated)
    assert str(reduced_error.value) == str(full_error.value)


# ---- the augmentation against a plain float64 implementation ----------------------------------------
def _hue_shift_reference(rgb, shift):
    """RGB -> HSV -> hue + shift (mod 1) -> RGB, the textbook formulas in float64."""
    r, g, b = np.moveaxis(rgb, -1, 0)
    v, lo = rgb.max(-1), rgb.min(-1)
    delta = v - lo
    safe = np.where(delta > 0, delta, 1.0)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(delta > 0, h / 6.0 % 1.0, 0.0)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1.0), 0.0)
    h = (h + shift) % 1.0 * 6.0
    sector, f = np.floor(h).astype(int) % 6, h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros_like(rgb)
    for k, channels in enumerate(table):
        out[sector == k] = np.stack(channels, -1)[sector == k]
    return out


def reference_view(resized, rng, size, **options):
    """augment_train's recipe step by step in float64: the same draws, the same ops, torchvision's clamps."""
    o = {**AUGMENT_OPTIONS, **options}
    height, width = resized.shape[:2]
    top = int(rng.integers(0, max(height - size, 0) + 1))
    left = int(rng.integers(0, max(width - size, 0) + 1))
    flip, jitter, order = rng.random() < o["flip_p"], rng.random() < o["jitter_p"], rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1.0 - o[k]), 1.0 + o[k]) for k in ("brightness", "contrast", "saturation")]
    hue, gray, blur = rng.uniform(-o["hue"], o["hue"]), rng.random() < o["gray_p"], rng.random() < o["blur_p"]
    sigma = rng.uniform(*o["blur_sigma"])
    x = resized[top:top + size, left:left + size].astype(np.float64) / 255.0
    if flip:
        x = x[:, ::-1]
    luma = LUMA_WEIGHTS.astype(np.float64)
    for op in order if jitter else ():
        if op == 0:
            x = np.clip(factors[0] * x, 0, 1)
        elif op == 1:
            x = np.clip(factors[1] * x + (1 - factors[1]) * (x @ luma).mean(), 0, 1)
        elif op == 2:
            x = np.clip(factors[2] * x + (1 - factors[2]) * (x @ luma)[..., None], 0, 1)
        elif hue != 0.0:
            x = np.clip(_hue_shift_reference(x, hue), 0, 1)
    if gray:
        x = np.repeat((x @ luma)[..., None], 3, axis=-1)
    if blur:
        x = cv2.GaussianBlur(np.ascontiguousarray(x), (5, 5), sigmaX=sigma, sigmaY=sigma)
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


@pytest.mark.parametrize("options", [{}, {"jitter_p": 1.0, "hue": 0.5}, {"jitter_p": 1.0, "gray_p": 1.0},
                                     {"jitter_p": 1.0, "brightness": 0.9, "contrast": 0.9, "saturation": 0.9}])
def test_augmentation_equals_a_float64_implementation_of_the_recipe(options):
    resized = np.random.default_rng(1).integers(0, 256, (40, 57, 3), dtype=np.uint8)
    resized = cv2.GaussianBlur(resized, (3, 3), 0.8)  # some smooth areas, some near-gray pixels
    for seed in range(25):
        got = augment_resized(resized, np.random.default_rng(seed), 32, **options)
        want = reference_view(resized, np.random.default_rng(seed), 32, **options)
        assert got.shape == (3, 32, 32) and got.dtype == np.float32 and got.flags.c_contiguous
        # About 15 float32 roundings (relative 2**-24 each) on values in [0, 1], times 1/std <= 4.5 after
        # normalising: well under 1e-4.  A wrong clamp, hue wrap or op order is off by 1e-2 or more.
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4, err_msg=f"seed {seed}")


@pytest.mark.parametrize("options", [{}, {"jitter_p": 1.0, "hue": 0.5}, {"jitter_p": 1.0, "gray_p": 1.0},
                                     {"jitter_p": 1.0, "brightness": 0.9, "contrast": 0.9, "saturation": 0.9,
                                      "blur_p": 1.0}])
def test_the_colour_work_on_the_device_equals_the_float64_recipe(options):
    """data.colour_work=device: the loader's crops and draws, coloured as one batch by train.view_colour (each
    sample with its own op order, a subset of rows per op), against the float64 recipe view by view."""
    from ernievil2.data.transforms import draw_view
    from ernievil2.train.view_colour import colour_views
    resized = np.random.default_rng(1).integers(0, 256, (40, 57, 3), dtype=np.uint8)
    resized = cv2.GaussianBlur(resized, (3, 3), 0.8)
    crops, draws = zip(*(draw_view(resized, np.random.default_rng(seed), 32, **options) for seed in range(25)))
    assert all(crop.dtype == np.uint8 and crop.shape == (32, 32, 3) for crop in crops)
    got = colour_views(np.stack(crops), np.stack(draws)).numpy()
    assert got.shape == (25, 3, 32, 32) and got.dtype == np.float32
    for seed in range(25):
        want = reference_view(resized, np.random.default_rng(seed), 32, **options)
        # float32 work on values in [0, 1] (at most ~40 roundings of 2**-24 through the hue formulas), times
        # 1/std <= 4.5: well under 1e-4; a wrong op order, clamp, hue sector or blur tap is off by 1e-2 or more.
        np.testing.assert_allclose(got[seed], want, rtol=0, atol=1e-4, err_msg=f"seed {seed}")


@pytest.mark.parametrize("opencv_wraps_hue", [True, False])
def test_hue_rotation_with_and_without_opencvs_own_wrap(monkeypatch, opencv_wraps_hue):
    import ernievil2.data.transforms as transforms
    monkeypatch.setattr(transforms, "_HSV2RGB_WRAPS_HUE", opencv_wraps_hue and transforms._HSV2RGB_WRAPS_HUE)
    rgb = np.random.default_rng(4).random((16, 16, 3)).astype(np.float32)
    for shift in (-0.5, -0.3, -0.01, 0.01, 0.2, 0.49):
        np.testing.assert_allclose(transforms.adjust_hue(rgb, shift), _hue_shift_reference(rgb.astype(np.float64),
                                                                                            shift),
                                   rtol=0, atol=2e-5, err_msg=str(shift))  # a few float32 roundings of values <= 1


def test_augment_train_is_resize_then_augment_resized():
    rgb = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    np.testing.assert_array_equal(augment_train(rgb, np.random.default_rng(3), 32),
                                  augment_resized(resize_short_side(rgb, 32), np.random.default_rng(3), 32))
    with pytest.raises(TypeError, match="unknown augmentation option"):
        augment_resized(rgb, np.random.default_rng(3), 32, flip=0.5)


# ---- samples -------------------------------------------------------------------------------------------
@pytest.fixture
def dataset(tmp_path, vocab_path, monkeypatch):
    monkeypatch.setenv("ERNIEVIL2_CACHE", str(tmp_path / "cache"))
    rows = []
    for i, (width, height) in enumerate([(640, 480), (300, 500), (1000, 900), (250, 250)]):
        data = blob_jpeg(width, height, (width / 2 + 9 * i, height / 3))
        if i == 3:  # a PNG among the JPEGs
            data = cv2.imencode(".png", cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
        rows.append(f"a photo number {i}\timg{i}\t{base64.b64encode(data).decode()}\tcat,dog,tree\n")
    path = tmp_path / "train.tsv"
    path.write_text("".join(rows), encoding="utf-8")
    return MultiViewDataset(RowIndex(str(path)), vocab_path, seed=5, image_size=64)


def test_a_sample_is_a_function_of_epoch_and_row_only(dataset):
    items = [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (2, 2)]
    first = {item: dataset[item] for item in items}
    again = {item: dataset[item] for item in reversed(items)}  # other neighbours before each (shared buffers)
    clone = pickle.loads(pickle.dumps(dataset))  # what a spawned data-loader worker holds
    for item in items:
        for other in (again[item], clone[item]):
            assert set(other) == set(first[item])
            for key, value in first[item].items():
                np.testing.assert_array_equal(value, other[key], err_msg=f"{item} {key}")
    views = first[(0, 0)]
    assert views["image_view1"].shape == (3, 64, 64) and views["image_view1"].dtype == np.float32
    assert np.abs(views["image_view1"] - views["image_view2"]).mean() > 0.05  # two different augmentations
    assert np.abs(first[(0, 0)]["image_view1"] - first[(1, 0)]["image_view1"]).mean() > 0.05  # epochs differ
    assert first[(0, 0)]["caption_key"] != first[(0, 1)]["caption_key"]
    assert list(first[(0, 0)]["caption_ids"][:1]) == [dataset.tokenizer.cls_id]


def test_with_the_colour_work_on_the_device_a_sample_is_its_crops_and_draws(dataset):
    """data.colour_work=device changes where the colour work runs, not the sample: the loader's crops and draws,
    coloured by the loader's own code, are the loader-path sample bit for bit; on the device, equal to rounding."""
    import copy

    from ernievil2.data.transforms import apply_colour
    from ernievil2.train.data import collate_samples
    from ernievil2.train.view_colour import colour_views
    on_device = copy.copy(dataset)
    on_device.colour_on_device = True
    items = [(0, 0), (0, 1), (1, 3)]
    for item in items:
        plain, split = dataset[item], on_device[item]
        assert set(split) == set(plain) | {"image_view1_colour", "image_view2_colour"}
        for key in ("image_view1", "image_view2"):
            assert split[key].dtype == np.uint8 and split[key].shape == (64, 64, 3)
            np.testing.assert_array_equal(apply_colour(split[key], split[f"{key}_colour"]), plain[key])
        for key in set(plain) - {"image_view1", "image_view2"}:
            np.testing.assert_array_equal(split[key], plain[key], err_msg=key)
    batch = collate_samples([on_device[item] for item in items])
    coloured = colour_views(batch["image_view2"], batch["image_view2_colour"]).numpy()
    np.testing.assert_allclose(coloured, np.stack([dataset[item]["image_view2"] for item in items]), rtol=0,
                               atol=1e-4)  # float32 roundings as in the test against the float64 recipe
    placeholder = on_device._placeholder(2)  # a bad row's stand-in stacks with the others
    assert collate_samples([on_device[(0, 0)], placeholder])["image_view1"].shape == (2, 64, 64, 3)
