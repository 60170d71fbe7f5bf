"""Synthetic image-text data for the one-command demo: coloured shapes on varied backgrounds, Chinese captions,
object tags; the same seed and parameters give byte-identical files."""
import base64
import hashlib
import json
import math
import os

import cv2
import numpy as np

from ..errors import DemoDataError
from ..fileio import write_text_atomic
from .prompts import TAG_PROMPT
from .tokenizer import ErnieTokenizer
from .tsv import write_tsv
from .vocab import build_vocab, check_coverage, write_vocab

GENERATOR_VERSION = 2  # 2: zero-shot files (colours)

# Well-separated hues so that JPEG and resizing cannot turn one colour into another.
COLOURS = {
    "红": (215, 35, 35),
    "绿": (40, 165, 60),
    "蓝": (35, 80, 215),
    "黄": (240, 215, 40),
    "紫": (140, 60, 185),
    "橙": (245, 135, 25),
    "白": (250, 250, 250),
    "黑": (25, 25, 25),
}
# Canonical name (used in tags) -> the words captions may use for it.
SHAPES = {
    "圆形": ("圆形", "圆", "圆圈"),
    "正方形": ("正方形", "方块", "方形"),
    "三角形": ("三角形", "三角"),
    "星形": ("星形", "星星", "五角星"),
    "菱形": ("菱形",),
    "十字形": ("十字形", "十字"),
}
# Background base colours; a scene only uses those far enough from all its object colours.
BACKGROUNDS = (
    (226, 226, 220), (236, 226, 204), (206, 224, 240), (214, 236, 214), (240, 216, 222),
    (150, 150, 150), (128, 146, 160), (62, 62, 72), (40, 56, 72),
)
MIN_CONTRAST = 100.0  # Euclidean RGB distance between an object colour and any background colour it sits on
COUNT_WORDS = {1: "一个", 2: "两个", 3: "三个", 4: "四个", 5: "五个", 6: "六个", 7: "七个", 8: "八个", 9: "九个"}
# Region name -> centre as a fraction of the image side (x, y); single objects are placed in one of these.
REGIONS = {"左边": (0.25, 0.5), "右边": (0.75, 0.5), "上面": (0.5, 0.25), "下面": (0.5, 0.75), "中间": (0.5, 0.5)}
REGION_WORDS = {
    "左边": ("左边", "左侧", "图的左边"), "右边": ("右边", "右侧", "图的右边"),
    "上面": ("上面", "上方", "顶部"), "下面": ("下面", "下方", "底部"), "中间": ("中间", "正中间", "画面中间"),
}
SIZE_WORDS = {"大": ("大的", "很大的"), "小": ("小的", "小小的")}
LIST_PREFIXES = ("图中有", "图片里有", "画面中有", "这张图里有", "可以看到", "图上画着")
FILLERS = ("这是一张图片，", "如图，", "一张简单的图：", "看这张图，")
MAX_OBJECTS = 5
SPLITS = ("train", "dev", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}

# ---- scenes ----------------------------------------------------------------------------------------
def _contrast_ok(colour, background):
    return math.dist(colour, background) >= MIN_CONTRAST


def _sample_groups(rng):
    n_groups = int(rng.choice([1, 2, 3], p=[0.25, 0.45, 0.30]))
    colour_names, shape_names = list(COLOURS), list(SHAPES)
    groups, seen = [], set()
    while len(groups) < n_groups:
        colour = colour_names[int(rng.integers(len(colour_names)))]
        shape = shape_names[int(rng.integers(len(shape_names)))]
        if (colour, shape) in seen:
            continue
        seen.add((colour, shape))
        count = int(rng.choice([1, 2, 3], p=[0.7, 0.2, 0.1]))
        # Several objects of a kind are small, or they would not fit beside the other groups.
        size = ("大" if rng.random() < 0.5 else "小") if count == 1 else "小"
        groups.append({"colour": colour, "shape": shape, "count": count, "size": size})
    while sum(g["count"] for g in groups) > MAX_OBJECTS:
        max(groups, key=lambda g: g["count"])["count"] -= 1
    return groups


def _sample_background(rng, groups):
    usable = [bg for bg in BACKGROUNDS if all(_contrast_ok(COLOURS[g["colour"]], bg) for g in groups)]
    if not usable:
        return None
    kind = str(rng.choice(["solid", "linear", "radial", "stripes"], p=[0.35, 0.35, 0.15, 0.15]))
    first = usable[int(rng.integers(len(usable)))]
    second = usable[int(rng.integers(len(usable)))] if kind != "solid" else first
    if kind != "solid" and second == first:
        kind = "solid"
    background = {"kind": kind, "colours": [list(first), list(second)],
                  "angle": int(rng.integers(0, 360)), "noise": int(rng.integers(0, 9))}
    mean = [(a + b) / 2 for a, b in zip(first, second)]
    luma = 0.299 * mean[0] + 0.587 * mean[1] + 0.114 * mean[2]
    if kind != "solid":
        background["description"] = "渐变色"
    else:
        background["description"] = "浅色" if luma > 170 else ("深色" if luma < 100 else "灰色")
    return background


def _place(rng, groups, size):
    """Give every object a centre, radius and angle, without overlaps; None if the layout does not fit."""
    placed = []  # (x, y, r) of every object so far

    def free(x, y, r):
        margin = 0.03 * size
        inside = r + 1 <= x <= size - r - 1 and r + 1 <= y <= size - r - 1
        return inside and all(math.hypot(x - px, y - py) >= r + pr + margin for px, py, pr in placed)

    regions = list(REGIONS)
    order = rng.permutation(len(regions))
    free_regions = [regions[k] for k in order]
    # Single objects first: each takes a named region, which its captions may mention.
    for group in sorted(groups, key=lambda g: g["count"]):
        group["objects"] = []
        for _ in range(group["count"]):
            fraction = rng.uniform(0.165, 0.2) if group["size"] == "大" else rng.uniform(0.085, 0.11)
            radius = round(fraction * size, 2)
            angle = int(rng.integers(-15, 16))
            for _attempt in range(60):
                if group["count"] == 1:
                    if not free_regions:
                        return None
                    region = free_regions[_attempt % len(free_regions)]
                    cx, cy = REGIONS[region]
                    jitter = 0.06 * size
                    x = round(cx * size + rng.uniform(-jitter, jitter), 2)
                    y = round(cy * size + rng.uniform(-jitter, jitter), 2)
                else:
                    x = round(rng.uniform(radius + 1, size - radius - 1), 2)
                    y = round(rng.uniform(radius + 1, size - radius - 1), 2)
                if free(x, y, radius):
                    break
            else:
                return None
            if group["count"] == 1:
                group["position"] = region
                free_regions.remove(region)
            placed.append((x, y, radius))
            group["objects"].append({"center": [x, y], "radius": radius, "angle": angle})
    return groups


def signature(scene):
    """What a caption can tell apart: the set of (colour, shape, count) groups."""
    return tuple(sorted((g["colour"], g["shape"], g["count"]) for g in scene["groups"]))


def sample_scene(rng, size):
    """A random scene description (JSON-serialisable dict)."""
    while True:
        groups = _sample_groups(rng)
        background = _sample_background(rng, groups)
        if background is None:
            continue
        shadow = bool(rng.random() < 0.25)
        outline = bool(rng.random() < 0.3)
        blur = bool(rng.random() < 0.3)
        tint = [int(v) for v in rng.integers(-12, 13, size=3)]
        if _place(rng, groups, size) is not None:
            return {"groups": groups, "background": background, "shadow": shadow, "outline": outline,
                    "blur": blur, "tint": tint}


# ---- rendering -------------------------------------------------------------------------------------
_SHIFT = 4  # OpenCV fixed-point drawing: coordinates in 1/16 pixel


def _polygon(kind, x, y, r, angle_degrees):
    if kind == "正方形":
        half = 0.85 * r
        points = [(-half, -half), (half, -half), (half, half), (-half, half)]
    elif kind == "三角形":
        outer = 1.15 * r
        points = [(outer * math.sin(a), -outer * math.cos(a)) for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)]
    elif kind == "星形":
        outer, inner = 1.15 * r, 0.48 * r
        points = [((outer if k % 2 == 0 else inner) * math.sin(k * math.pi / 5),
                   -(outer if k % 2 == 0 else inner) * math.cos(k * math.pi / 5)) for k in range(10)]
    elif kind == "菱形":
        # Taller than wide, so a slightly rotated square is never mistaken for it.
        points = [(0.0, -1.2 * r), (0.72 * r, 0.0), (0.0, 1.2 * r), (-0.72 * r, 0.0)]
    elif kind == "十字形":
        arm, reach = 0.36 * r, 1.05 * r
        points = [(-arm, -reach), (arm, -reach), (arm, -arm), (reach, -arm), (reach, arm), (arm, arm),
                  (arm, reach), (-arm, reach), (-arm, arm), (-reach, arm), (-reach, -arm), (-arm, -arm)]
    else:
        raise DemoDataError(f"unknown shape {kind!r}")
    cos_a, sin_a = math.cos(math.radians(angle_degrees)), math.sin(math.radians(angle_degrees))
    scale = 1 << _SHIFT
    return np.array([[round((x + px * cos_a - py * sin_a) * scale), round((y + px * sin_a + py * cos_a) * scale)]
                     for px, py in points], dtype=np.int32)


def _draw_shape(image, kind, x, y, r, angle, colour, thickness=-1):
    colour = tuple(int(c) for c in colour)
    scale = 1 << _SHIFT
    if kind == "圆形":
        cv2.circle(image, (round(x * scale), round(y * scale)), round(r * scale), colour, thickness,
                   cv2.LINE_AA, _SHIFT)
    elif thickness < 0:
        cv2.fillPoly(image, [_polygon(kind, x, y, r, angle)], colour, cv2.LINE_AA, _SHIFT)
    else:
        cv2.polylines(image, [_polygon(kind, x, y, r, angle)], True, colour, thickness, cv2.LINE_AA, _SHIFT)


def _render_background(rng, background, size):
    first = np.array(background["colours"][0], dtype=np.float64)
    second = np.array(background["colours"][1], dtype=np.float64)
    kind = background["kind"]
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    if kind == "solid":
        t = np.zeros((size, size), dtype=np.float64)
    elif kind == "linear":
        angle = math.radians(background["angle"])
        t = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
    elif kind == "radial":
        t = np.sqrt((coords[None, :] - 0.5) ** 2 + (coords[:, None] - 0.5) ** 2) / math.sqrt(0.5)
    else:  # soft stripes: alternate bands of the two colours, a cheap "texture"
        period = 6 + background["angle"] % 10
        band = (np.arange(size)[None, :] + np.arange(size)[:, None] * (background["angle"] % 3 - 1)) // period
        t = np.broadcast_to((band % 2).astype(np.float64) * 0.6, (size, size))
    # Per-channel 2-D arithmetic: numpy broadcasting over a trailing axis of 3 is many times slower.
    channels = [np.rint(first[c] + (second[c] - first[c]) * t).astype(np.int16) for c in range(3)]
    if background["noise"]:
        amplitude = background["noise"]
        # A grain shared by the channels plus half as much per channel: soft, integer arithmetic only.
        shared = rng.integers(-amplitude, amplitude + 1, size=(size, size), dtype=np.int16)
        own = rng.integers(-amplitude, amplitude + 1, size=(3, size, size), dtype=np.int16) // 2
        for c in range(3):
            channels[c] += shared + own[c]
    image = cv2.merge(channels)
    return np.clip(image, 0, 255).astype(np.uint8)


def render_scene(scene, size, rng):
    """Scene -> uint8 HWC RGB image."""
    image = _render_background(rng, scene["background"], size)
    if scene["shadow"]:
        # A soft offset shadow under every object, drawn before any object so it never covers one.
        shadow = cv2.GaussianBlur(image, (3, 3), 0) // 2 + image // 4
        offset = max(1.0, size / 48)
        mask = np.zeros((size, size), dtype=np.uint8)
        for group in scene["groups"]:
            for obj in group["objects"]:
                _draw_shape(mask, group["shape"], obj["center"][0] + offset, obj["center"][1] + offset,
                            obj["radius"], obj["angle"], (255,))
        alpha = cv2.merge([mask, mask, mask]).astype(np.uint16)  # same shape as image: no slow broadcasting
        image = ((image.astype(np.uint16) * (255 - alpha) + shadow.astype(np.uint16) * alpha) // 255).astype(np.uint8)
    tint = np.array(scene["tint"], dtype=np.int16)
    for group in scene["groups"]:
        colour = np.clip(np.array(COLOURS[group["colour"]], dtype=np.int16) + tint, 0, 255)
        for obj in group["objects"]:
            _draw_shape(image, group["shape"], obj["center"][0], obj["center"][1], obj["radius"], obj["angle"],
                        colour)
            if scene["outline"]:
                _draw_shape(image, group["shape"], obj["center"][0], obj["center"][1], obj["radius"],
                            obj["angle"], colour * 3 // 5, thickness=1)
    if scene["blur"]:
        image = cv2.GaussianBlur(image, (3, 3), 0.7)  # 8-bit GaussianBlur is bit-exact in OpenCV 4
    return image


def encode_jpeg(rgb, quality=90):
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise DemoDataError("OpenCV could not encode a JPEG")
    return encoded.tobytes()


# ---- captions --------------------------------------------------------------------------------------
def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def object_tags(scene):
    """Canonical tags, one per group: e.g. ``["红色圆形", "蓝色三角形"]``."""
    return [f"{g['colour']}色{g['shape']}" for g in scene["groups"]]


def _group_phrase(rng, group, noise):
    colour = group["colour"]
    if rng.random() < 0.02 * noise:
        colour = _pick(rng, [c for c in COLOURS if c != colour])  # an annotator's slip
    shape_word = _pick(rng, SHAPES[group["shape"]])
    mention_size = group["count"] == 1 and rng.random() < 0.7 or group["count"] > 1 and rng.random() < 0.2
    size_word = _pick(rng, SIZE_WORDS[group["size"]]) if mention_size else ""
    if rng.random() < 0.08 * noise:
        colour_word = ""  # the colour left out, as many real captions do
    elif size_word:
        colour_word = f"{colour}色"  # "大的红色圆形", never "大红色" (which means bright red)
    else:
        colour_word = _pick(rng, (f"{colour}色的", f"{colour}色", f"{colour}色的", colour))
    return f"{COUNT_WORDS[group['count']]}{size_word}{colour_word}{shape_word}"


def _join(rng, phrases):
    if len(phrases) == 1:
        return phrases[0]
    separator = _pick(rng, ("、", "，", "、", ","))
    last = _pick(rng, ("和", "以及", "和", "还有"))
    return separator.join(phrases[:-1]) + last + phrases[-1]


def make_caption(rng, scene, noise=1.0):
    """One caption of ``scene``; ``noise`` scales the probabilities of the web-caption imperfections."""
    groups = [scene["groups"][k] for k in rng.permutation(len(scene["groups"]))]
    if len(groups) > 1 and rng.random() < 0.08 * noise:
        groups = groups[:-1]  # one object group not mentioned at all
    phrases = [_group_phrase(rng, g, noise) for g in groups]
    template = int(rng.integers(6))
    placed = [(g, p) for g, p in zip(groups, phrases) if "position" in g]
    if template == 1 and placed:
        # Positional: "左边是一个大的黄色星形，右边有一个绿色方块，另外还有两个小的蓝色三角形"
        parts = [f"{_pick(rng, REGION_WORDS[g['position']])}{_pick(rng, ('是', '有'))}{p}" for g, p in placed]
        rest = [p for g, p in zip(groups, phrases) if "position" not in g]
        if rest:
            parts.append(_pick(rng, ("另外还有", "还有", "旁边还有")) + _join(rng, rest))
        text = "，".join(parts)
    elif template == 2:
        text = _join(rng, phrases)  # bare, like a tag-style web caption
    elif template == 3:
        described = scene["background"]["description"]
        if rng.random() < 0.5:
            text = f"在{described}的背景上有{_join(rng, phrases)}"
        else:
            text = f"{_join(rng, phrases)}，背景是{described}的"
    elif template == 4 and sum(g["count"] for g in scene["groups"]) > 1:
        total = sum(g["count"] for g in scene["groups"])
        text = f"一共有{COUNT_WORDS[total]}{_pick(rng, ('图形', '物体', '形状'))}：{_join(rng, phrases)}"
    else:
        text = f"{_pick(rng, LIST_PREFIXES)}{_join(rng, phrases)}"
    if rng.random() < 0.12 * noise:
        text = _pick(rng, FILLERS) + text
    text += _pick(rng, ("", "", "。", "。", ".", "！"))
    if rng.random() < 0.05 * noise and len(text) > 2:
        cut = int(rng.integers(1, len(text)))
        text = text[:cut] + _pick(rng, (" ", "  ")) + text[cut:]  # stray spaces, as in scraped text
    return text


def lexicon():
    """Every word and symbol the caption and tag templates can emit (so the vocabulary covers all of them)."""
    words = [TAG_PROMPT, "，、,：。.！", "另外还有旁边还有一共有在的背景上有背景是的", "是有和以及还有", "图形物体形状"]
    words += [f"{c}色的" for c in COLOURS] + [w for ws in SHAPES.values() for w in ws] + list(SHAPES)
    words += [w for ws in REGION_WORDS.values() for w in ws] + [w for ws in SIZE_WORDS.values() for w in ws]
    words += list(COUNT_WORDS.values()) + list(LIST_PREFIXES) + list(FILLERS) + ["浅色", "深色", "灰色", "渐变色"]
    return words


# ---- the data set ----------------------------------------------------------------------------------
def _image_rng(seed, split, index):
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def generate_split(split, n_images, captions_per_image, seed=0, image_size=96, caption_noise=1.0,
                   unique_signatures=False, jpeg_quality=90):
    """-> (rows, scenes): rows are (caption, image_id, base64, tags) tuples, image-major order."""
    rows, scenes, used = [], [], set()
    for index in range(n_images):
        rng = _image_rng(seed, split, index)
        scene = sample_scene(rng, image_size)
        # Evaluation splits avoid repeating what captions can tell apart, so R@1 is attainable; after many
        # tries (a split larger than the signature space) a repeat is accepted.
        for _ in range(2000):
            if not unique_signatures or signature(scene) not in used:
                break
            scene = sample_scene(rng, image_size)
        used.add(signature(scene))
        image_id = f"{split}_{index:06d}"
        b64 = base64.b64encode(encode_jpeg(render_scene(scene, image_size, rng), jpeg_quality)).decode("ascii")
        tags = ",".join(object_tags(scene))
        captions = []
        for _ in range(captions_per_image):
            caption = make_caption(rng, scene, caption_noise)
            for _retry in range(20):  # several captions of one image should be different sentences
                if caption not in captions:
                    break
                caption = make_caption(rng, scene, caption_noise)
            captions.append(caption)
            rows.append((caption, image_id, b64, tags))
        scenes.append({"split": split, "image_id": image_id, **scene, "captions": captions})
    return rows, scenes


# Zero-shot classification of the test images' colours: the images whose groups all share one colour, labelled
# with it (`红色`, ...); the prompts are the captions' own words, one per shape (an ensemble over shapes).
ZEROSHOT_FILES = {"zeroshot_images": "zeroshot_colours.tsv", "zeroshot_labels": "zeroshot_labels.txt",
                  "zeroshot_templates": "zeroshot_templates.txt"}
ZEROSHOT_TEMPLATES = tuple(f"图中有一个{{}}的{shape}" for shape in SHAPES)


def write_zeroshot_files(paths, test_rows, test_scenes):
    """label \\t image_id \\t base64 rows (one per single-colour test image), the labels and the templates;
    returns the number of rows."""
    b64 = {image_id: image for _, image_id, image, _ in test_rows}
    rows = [(f"{scene['groups'][0]['colour']}色", scene["image_id"], b64[scene["image_id"]])
            for scene in test_scenes if len({g["colour"] for g in scene["groups"]}) == 1]
    write_tsv(paths["zeroshot_images"], rows)
    write_text_atomic(paths["zeroshot_labels"], "".join(f"{colour}色\n" for colour in COLOURS))
    write_text_atomic(paths["zeroshot_templates"], "".join(f"{t}\n" for t in ZEROSHOT_TEMPLATES))
    return len(rows)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


DEFAULTS = dict(seed=0, train_images=4000, dev_images=100, test_images=100, captions_per_train_image=1,
                captions_per_test_image=5, image_size=96, caption_noise=1.0)


def _check_params(params):
    for name in ("train_images", "dev_images", "test_images", "captions_per_train_image", "captions_per_test_image"):
        value = params[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DemoDataError(f"{name} must be a positive integer, got {value!r}")
    size = params["image_size"]
    if not isinstance(size, int) or isinstance(size, bool) or not 48 <= size <= 1024:
        raise DemoDataError(f"image_size must be an integer from 48 to 1024, got {size!r}")
    if not isinstance(params["seed"], int) or isinstance(params["seed"], bool) or params["seed"] < 0:
        raise DemoDataError(f"seed must be a non-negative integer, got {params['seed']!r}")
    noise = params["caption_noise"]
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not 0 <= noise <= 5:
        raise DemoDataError(f"caption_noise must be a number from 0 (clean) to 5, got {noise!r}")


def generate_demo_data(out_dir, seed=0, train_images=4000, dev_images=100, test_images=100,
                       captions_per_train_image=1, captions_per_test_image=5, image_size=96, caption_noise=1.0):
    """Write the demo data set to ``out_dir``; returns ``{name: path}`` for train, dev, test, vocab, scenes,
    manifest.  Dev and test have ``captions_per_test_image`` captions per image; train rows default to one
    caption per image, so a training batch never holds the same image twice (no false negatives).

    Every image shows 1-3 *groups*; a group is 1-3 objects of one colour, shape and size.  Captions describe the
    groups with several phrasings plus web-caption noise (filler words, punctuation and spacing variation, a
    dropped attribute or object, rarely a wrong colour).  The 4th TSV column lists the groups as object tags.

    Determinism: each image has its own numpy Generator seeded with (seed, split, index), so a split does not
    change when another split's size does.  Pixel work is integer (OpenCV drawing in fixed point, integer noise)
    or plain IEEE float arithmetic; the only transcendental functions are Python's math.sin/cos on scalars.
    Same seed and parameters -> byte-identical files.

    Files written to ``out_dir``: ``train.tsv``, ``dev.tsv``, ``test.tsv`` (``text \\t image_id \\t base64 JPEG \\t
    tags``), ``vocab.txt`` (``token\\tid``), ``scenes.jsonl`` (what each image contains, for tests and
    debugging) and ``manifest.json`` (parameters, row counts and SHA-256 of every file; written last, so its
    presence means the set is complete).
    """
    params = dict(seed=seed, train_images=train_images, dev_images=dev_images, test_images=test_images,
                  captions_per_train_image=captions_per_train_image,
                  captions_per_test_image=captions_per_test_image, image_size=image_size,
                  caption_noise=caption_noise)
    _check_params(params)
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"{name}.tsv") for name in SPLITS}
    paths.update(vocab=os.path.join(out_dir, "vocab.txt"), scenes=os.path.join(out_dir, "scenes.jsonl"),
                 manifest=os.path.join(out_dir, "manifest.json"))
    paths.update({name: os.path.join(out_dir, file) for name, file in ZEROSHOT_FILES.items()})

    counts = {"train": train_images, "dev": dev_images, "test": test_images}
    per_image = {"train": captions_per_train_image, "dev": captions_per_test_image, "test": captions_per_test_image}
    all_rows, all_scenes = {}, []
    for split in SPLITS:
        rows, scenes = generate_split(split, counts[split], per_image[split], seed=seed, image_size=image_size,
                                      caption_noise=caption_noise, unique_signatures=split != "train")
        all_rows[split] = rows
        all_scenes.extend(scenes)

    # Vocabulary from the training text and the template lexicon only: no dev/test text leaks into it, yet
    # every word the generator can produce is covered.
    train_texts = [text for row in all_rows["train"] for text in (row[0], row[3])]
    tokens = build_vocab(train_texts + lexicon(), min_count=1)
    write_vocab(tokens, paths["vocab"])
    tokenizer = ErnieTokenizer.from_file(paths["vocab"])
    texts = [text for rows in all_rows.values() for row in rows for text in (row[0], row[3])]
    prompts = [t.format(f"{colour}色") for t in ZEROSHOT_TEMPLATES for colour in COLOURS]
    uncovered = check_coverage(tokenizer, texts + [TAG_PROMPT] + prompts)
    if uncovered:
        raise DemoDataError(f"internal error: the demo vocabulary misses tokens of {uncovered[0]!r}")

    for split in SPLITS:
        write_tsv(paths[split], all_rows[split])
    write_text_atomic(paths["scenes"], "".join(json.dumps(s, ensure_ascii=False, sort_keys=True) + "\n"
                                         for s in all_scenes))
    zeroshot_rows = write_zeroshot_files(paths, all_rows["test"], [s for s in all_scenes if s["split"] == "test"])
    manifest = {
        "generator": "ernievil2.demo_data", "version": GENERATOR_VERSION, "params": params,
        "format": "text \\t image_id \\t base64(JPEG) \\t object_tags (comma-separated)",
        "tag_prompt": TAG_PROMPT, "vocab_size": len(tokens),
        "files": {name: {"file": os.path.basename(paths[name]), "sha256": _sha256(paths[name]),
                         **({"rows": len(all_rows[name]), "images": counts[name]} if name in SPLITS else {})}
                  for name in (*SPLITS, "vocab", "scenes")},
    }
    manifest["files"].update({name: {"file": file, "sha256": _sha256(paths[name])}
                              for name, file in ZEROSHOT_FILES.items()})
    manifest["files"]["zeroshot_images"]["rows"] = zeroshot_rows
    # Written last: an interrupted run leaves no manifest, so ensure_demo_data regenerates.
    write_text_atomic(paths["manifest"], json.dumps(manifest, ensure_ascii=False, indent=2, sort_keys=True) + "\n")
    return paths


def ensure_demo_data(out_dir, **params):
    """Generate unless ``out_dir`` already holds a complete set made with the same parameters.

    Returns ``(paths, generated)``."""
    wanted = {**DEFAULTS, **params}
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise DemoDataError(f"unknown parameter(s): {', '.join(unknown)}")
    manifest_path = os.path.join(out_dir, "manifest.json")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        current = (manifest.get("version") == GENERATOR_VERSION and manifest.get("params") == wanted and all(
            os.path.isfile(os.path.join(out_dir, entry["file"])) for entry in manifest["files"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        current = False
    if current:
        paths = {name: os.path.join(out_dir, entry["file"]) for name, entry in manifest["files"].items()}
        return {**paths, "manifest": manifest_path}, False
    return generate_demo_data(out_dir, **wanted), True
