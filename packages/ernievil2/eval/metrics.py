"""Cross-modal retrieval metrics: Recall@K and MRR for text <-> image, exact and block-wise (never the whole
score matrix), with the official evaluator's protocol and arithmetic (README: "Evaluation").  numpy only."""
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

DEFAULT_KS = (1, 5, 10)
OFFICIAL_ID = "1"  # the official run_infer.py writes this constant instead of an image id

_SCORE_BLOCK = 1 << 24  # score elements per block by default: 64 MB of float32 (+16 MB of mask), two in use


# ---------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------

def is_official_ids(image_ids):
    """True when every id is the official placeholder "1" (the file carries no image identity)."""
    ids = np.asarray(image_ids)
    return ids.size > 0 and bool(np.all(ids.astype(str) == OFFICIAL_ID))


def check_ks(ks):
    ks = tuple(int(k) for k in ks)
    if not ks or any(k < 1 for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"ks must be distinct positive integers, got {ks}")
    return ks


def _as_matrix(x, name):
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] array, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        raise ValueError(f"{name} row {int(np.argmax(bad))} contains NaN or infinity")
    return x


def _count(mask, axis):
    # Counting bytes into a narrow accumulator is ~2x faster than bool.sum(); 16 bits suffice below 65536.
    dtype = np.uint16 if mask.shape[axis] < 65536 else np.int64
    return np.add.reduce(mask.view(np.uint8), axis=axis, dtype=dtype)


def _blocks(g, rows):
    """Split the (image-sorted) query rows into blocks of at most `rows` rows that never cut an image's run of
    captions (an image with more captions than `rows` gets a block of its own)."""
    n = len(g)
    run_starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    blocks, a = [], 0
    while a < n:
        b = a + rows
        if b < n:
            j = np.searchsorted(run_starts, b, side="right") - 1
            if run_starts[j] > a:
                b = int(run_starts[j])
            else:
                b = int(run_starts[j + 1]) if j + 1 < len(run_starts) else n
        blocks.append((a, min(b, n)))
        a = min(b, n)
    return blocks


def _ranks(text, gallery, g, rows):
    """Exact ranks (wrong candidates scoring strictly higher) for text->image and image->text.

    text [N, D] sorted by g (non-decreasing gallery index of each row; every gallery index occurs), gallery
    [M, D].  Returns (t_rank [N], i_rank [M]).  A wrong candidate tied with the correct one ranks after it (the
    official rule; ranks do not depend on candidate order).

    Scores are computed in row blocks, never the whole N x M matrix: two blocks of scores and masks take
    10 * rows * M bytes.  Instead of a running top-K, each block adds to running counts of "wrong candidates
    scoring higher", which needs every query's correct score first: pass 1 computes the diagonal tiles (each
    block of captions against its own images), pass 2 every other tile.  Each score is computed once, so a
    query's correct score and the scores it is compared with come from the same matrix.
    """
    n, m = len(text), len(gallery)
    t_rank = np.zeros(n, np.int64)
    i_rank = np.zeros(m, np.int64)
    own = np.empty(n, np.float32)  # score of each text with its image
    best = np.empty(m, np.float32)  # best score of each image with one of its captions
    blocks = [(a, b, int(g[a]), int(g[b - 1]) + 1) for a, b in _blocks(g, rows)]
    # Pass 1: diagonal tiles, each block of captions against its own images (they partition the gallery).
    for a, b, c0, c1 in blocks:
        tile = text[a:b] @ gallery[c0:c1].T
        local = g[a:b] - c0
        own[a:b] = tile[np.arange(b - a), local]
        runs = np.flatnonzero(np.r_[True, local[1:] != local[:-1]])
        best[c0:c1] = np.maximum.reduceat(own[a:b], runs)
        t_rank[a:b] += _count(tile > own[a:b, None], 1)
        i_rank[c0:c1] += _count(tile > best[None, c0:c1], 0)
    # Pass 2: all other tiles.  Two reused buffers (fresh big arrays would cost page faults every tile): while
    # BLAS fills one, a helper thread compares the other (numpy releases the GIL), so the single-threaded
    # comparisons hide behind the multi-threaded matrix products.
    tiles = [(a, b, lo, hi) for a, b, c0, c1 in blocks for lo, hi in ((0, c0), (c1, m)) if hi > lo]
    largest = max([(b - a) * (hi - lo) for a, b, lo, hi in tiles], default=0)
    buffers = [(np.empty(largest, np.float32), np.empty(largest, np.bool_)) for _ in range(min(2, len(tiles)))]

    def compare(scores, mask, a, b, lo, hi):
        t_rank[a:b] += _count(np.greater(scores, own[a:b, None], out=mask), 1)
        i_rank[lo:hi] += _count(np.greater(scores, best[None, lo:hi], out=mask), 0)

    with ThreadPoolExecutor(1) as helper:
        running = []
        for index, (a, b, lo, hi) in enumerate(tiles):
            if len(running) == 2:
                running.pop(0).result()  # the tile that used this buffer is done
            score_buf, mask_buf = buffers[index % 2]
            shape = (b - a, hi - lo)
            scores = score_buf[:shape[0] * shape[1]].reshape(shape)
            np.matmul(text[a:b], gallery[lo:hi].T, out=scores)
            running.append(helper.submit(compare, scores, mask_buf[:scores.size].reshape(shape), a, b, lo, hi))
        for job in running:
            job.result()
    return t_rank, i_rank


def _pct(fraction):
    # The official arithmetic: round(np.float64 * 100, 2), i.e. numpy's round-half-even on the scaled value.
    return float(np.round(np.float64(fraction) * 100, 2))


def _direction(ranks, ks):
    n = float(len(ranks))
    recalls = [(ranks < k).sum() / n for k in ks]
    mean = sum(recalls) / float(len(recalls))  # (r1 + r5 + r10) / 3.0, summed left to right like the official
    mrr = (1.0 / (1.0 + ranks)).sum() / n
    return recalls + [mean, mrr]


def retrieval_metrics(text_emb, image_emb, image_ids=None, ks=DEFAULT_KS, pairs=False, block_size=None, folds=1):
    """Recall@K (percent), mean recall and MRR in both directions, plus the counts.

    text_emb, image_emb: [N, D] (row i: a caption and its image).  image_ids: [N] ids; rows sharing one are
    captions of one image.  Pairs protocol (row i <-> row i only) when pairs=True, image_ids is None, or every
    id is the official "1".  block_size: query rows per score block (default: about 2**24 scores per block).

    Returns {"text2image": {"R@1": .., "R@5": .., "R@10": .., "mean_recall": .., "MRR": ..}, "image2text": {..},
    "mean": {..}, "counts": {"text_queries": N, "image_queries": M}, "protocol": "pairs"|"grouped", "ks": [..]},
    every number a percentage rounded to 2 places as the table prints it.

    folds: split the gallery (in order of first appearance) into this many equal parts, rank each part's queries
    within that part only, and average the fractions over the parts -- the "COCO 1K, 5 folds" protocol, which
    keeps the difficulty of a small gallery while every query counts (counts then also has "folds").
    """
    ks = check_ks(ks)
    text = _as_matrix(text_emb, "text_emb")
    image = _as_matrix(image_emb, "image_emb")
    if image.shape != text.shape:
        raise ValueError(f"text_emb {text.shape} and image_emb {image.shape} must have the same shape")
    n = len(text)
    if image_ids is not None and len(image_ids) != n:
        raise ValueError(f"{len(image_ids)} image ids for {n} rows")
    grouped = not pairs and image_ids is not None and not is_official_ids(image_ids)
    if grouped:
        ids = np.asarray(image_ids)
        _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
        by_first = np.argsort(first)  # gallery in order of first appearance
        position = np.empty(len(first), np.int64)
        position[by_first] = np.arange(len(first))
        g = position[inverse.reshape(-1)]
        gallery = image[first[by_first]]
        if np.any(g[1:] < g[:-1]):  # captions not already grouped by image: sort them (a copy of the texts)
            order = np.argsort(g, kind="stable")
            text, g = text[order], g[order]
    else:
        gallery, g = image, np.arange(n)
    m = len(gallery)
    folds = int(folds)
    if folds < 1 or m % folds:
        raise ValueError(f"folds must be a positive divisor of the {m} gallery images, got {folds}")
    if block_size is not None and int(block_size) < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    size = m // folds
    per_fold = []
    for f in range(folds):
        in_fold = (g >= f * size) & (g < (f + 1) * size)
        fold_gallery = gallery[f * size:(f + 1) * size]
        rows = int(block_size) if block_size else max(1, _SCORE_BLOCK // size)
        t_rank, i_rank = _ranks(text[in_fold], fold_gallery, g[in_fold] - f * size, rows)
        per_fold.append((_direction(t_rank, ks), _direction(i_rank, ks)))
    t2i, i2t = ([sum(v) / folds for v in zip(*(fold[d] for fold in per_fold))] for d in (0, 1))
    mean = [(a + b) / 2 for a, b in zip(t2i, i2t)]

    def named(values):
        out = {f"R@{k}": _pct(v) for k, v in zip(ks, values)}
        out["mean_recall"] = _pct(values[-2])
        out["MRR"] = _pct(values[-1])
        return out

    return {"text2image": named(t2i), "image2text": named(i2t), "mean": named(mean),
            "counts": {"text_queries": n, "image_queries": m, **({"folds": folds} if folds > 1 else {})},
            "protocol": "grouped" if grouped else "pairs", "ks": list(ks)}


# ---------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------

def format_table(metrics):
    """The official printout: tabulate's "github" table with floatfmt ".2f" (text columns left-aligned,
    numbers right-aligned, every column at least its header plus two characters wide)."""
    ks = metrics["ks"]
    headers = ["Name"] + [f"R@{k}" for k in ks] + ["meanRecall"]
    rows = []
    for label, key in (("Text2Image", "text2image"), ("Image2Text", "image2text"), ("MeanRecall", "mean")):
        d = metrics[key]
        rows.append([label] + [f"{d[f'R@{k}']:.2f}" for k in ks] + [f"{d['mean_recall']:.2f}"])
    widths = [max([len(h) + 2] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells):
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in rows])


def format_json(metrics):
    return json.dumps(metrics, indent=2)
