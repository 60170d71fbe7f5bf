"""`python -m ernievil2 zeroshot`: zero-shot image classification with prompt templates (the CLIP recipe).

A class's vector is the L2-normalised mean of its L2-normalised prompt embeddings; an image's scores are its
cosine with each class vector times the model's logit scale, through a softmax.  Images come from a gallery
source; a TSV with a label column first (`label \\t image_id \\t base64`) also yields accuracy.
"""
import collections
import json
import logging
import unicodedata

import numpy as np

from ..data.prompts import ZEROSHOT_TEMPLATES, read_labels, read_templates
from ..data.sources import image_source
from ..data.tokenizer import ErnieTokenizer
from ..data.tsv import BadRow
from ..errors import ConfigError, InputError
from ..fileio import AtomicFile
from .engines import make_encoder
from .gallery import ItemCounts, batched, iter_image_embeddings
from .job import ChunkedJob, run_job
from .options import ZEROSHOT_SCHEMA, engine_options, load_query_config, pipeline_options
from .pipeline import encode_texts_by_length
from .sharding import config_fingerprint, source_hash

logger = logging.getLogger(__name__)

FALLBACK_LOGIT_SCALE = 100.0  # CLIP's clamp, for exports that predate the recorded scale


def load_zeroshot_config(path, overrides=()):
    cfg = load_query_config(path, overrides, ZEROSHOT_SCHEMA)
    source = path or "<config>"
    for key in ("images", "labels"):
        if not cfg[key]:
            raise ConfigError(f"{source}: '{key}' is not set (-o {key}=...)")
    if not (cfg.output_file or "").endswith(".jsonl"):
        raise ConfigError(f"{source}: 'output_file' must end in .jsonl for zeroshot, got {cfg.output_file!r} "
                          f"(add -o output_file=PRED.jsonl)")
    return cfg


def class_embeddings(encoder, tokenizer, labels, templates=ZEROSHOT_TEMPLATES, max_len=48, batch_size=32):
    """[C, D] class vectors: per label, the L2-normalised mean of its prompts' (L2-normalised) embeddings."""
    prompts = [template.format(label) for label in labels for template in templates]
    ids = [np.asarray(tokenizer.encode(p, max_len), np.int64) for p in prompts]
    vectors = encode_texts_by_length(encoder, ids, batch_size, tokenizer.pad_id).astype(np.float64)
    means = vectors.reshape(len(labels), len(templates), -1).mean(axis=1)
    return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


def classify(image_embeddings, class_vectors, logit_scale, top_k=5):
    """(indices [N, k], probabilities [N, k]) of the k most probable classes per image, best first; ties go to
    the class listed first."""
    logits = logit_scale * (np.asarray(image_embeddings, np.float64) @ np.asarray(class_vectors, np.float64).T)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    k = min(top_k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


def format_accuracy(acc):
    """Top-1 / top-5 accuracy and a per-class table (github-style, like eval_retri.py's)."""
    rows = [["all", str(acc["images"]), f"{acc['top1']:.2f}", f"{acc['top5']:.2f}"]]
    rows += [[label, str(c["images"]), f"{c['top1']:.2f}", f"{c['top5']:.2f}"] for label, c in acc["per_class"].items()]
    headers = ["Class", "Images", "Top-1", "Top-5"]
    widths = [max(len(h) + 2, *(_width(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells):
        return "| " + " | ".join(c + " " * (w - _width(c)) if i == 0 else " " * (w - _width(c)) + c
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in rows])


def run_zeroshot(cfg, encoder=None):
    """The `zeroshot` command (cfg from load_zeroshot_config); `encoder` (tests) replaces the configured one.  A
    chunked job (infer.job): sharded over ranks and resumable like run_infer.sh; returns a ChunkSummary whose
    `accuracy` is set for labelled images."""
    return run_job(ZeroShotJob(cfg, encoder))


class ZeroShotJob(ChunkedJob):
    """Images -> their top-k classes as JSONL records (one text column of a chunk); merged into PRED.jsonl."""
    noun, verb = "image", "classified"
    strings = ("records",)

    def __init__(self, cfg, encoder=None):
        self.labels = read_labels(cfg.labels)
        self.templates = read_templates(cfg.templates) if cfg.templates else ZEROSHOT_TEMPLATES
        self.source = image_source(cfg.images, labelled=True)
        stamp = config_fingerprint(cfg, [source_hash(self.source), self.labels, self.templates])
        super().__init__(cfg.output_file, stamp, self.source.count, cfg.chunk_rows, pipeline_options(cfg),
                         cfg.bad_row_log, cfg.progress)
        self.cfg, self.encoder = cfg, encoder

    def prepare(self):
        self.encoder = self.encoder or make_encoder(engine_options(self.cfg))
        tokenizer = ErnieTokenizer.from_file(self.cfg.vocab_file)
        self.vectors = class_embeddings(self.encoder, tokenizer, self.labels, self.templates,
                                        self.cfg.max_text_seqlen, self.options.batch_size)
        self.scale = self.encoder.logit_scale
        if self.scale is None:
            logger.warning("this export does not record the model's logit scale; scores use %s (rankings and "
                           "accuracy are unaffected; export again to record it)", FALLBACK_LOGIT_SCALE)
            self.scale = FALLBACK_LOGIT_SCALE

    def fill(self, first, stop, writer, policy, counts, progress, pool):
        items = _checked_labels(self.source.items(first, stop), set(self.labels), self.cfg.labels)
        stats = ItemCounts()
        for block in batched(iter_image_embeddings(items, self.options, self.encoder, policy, stats, progress, pool),
                             256):
            order, probs = classify(np.stack([v for _, v in block]), self.vectors, self.scale, self.cfg.top_k)
            records = []
            for (item, _), best, p in zip(block, order, probs):
                record = {"image_id": item.id, "predictions": [{"label": self.labels[i], "score": round(float(q), 6)}
                                                               for i, q in zip(best, p)]}
                if item.label is not None:
                    record["label"] = item.label
                records.append(json.dumps(record, ensure_ascii=False))
            writer.add(records=records)
        return stats.items, stats.embedded

    def start_merge(self):
        self.out = AtomicFile(self.output_file)
        self.score = Accuracy(self.labels)

    def merge_chunk(self, arrays):
        for line in arrays["records"]:
            record = json.loads(str(line))
            self.score.add(record.get("label"), [p["label"] for p in record["predictions"]])
            self.out.write((str(line) + "\n").encode("utf-8"))

    def finish_merge(self, summary):
        if summary.written == 0:
            raise InputError(f"{self.cfg.images}: no usable images to classify")
        self.out.publish()
        if self.score.labelled:
            summary.accuracy = self.score.accuracy()
            summary.notes += ["", format_accuracy(summary.accuracy)]

    def abort_merge(self):
        self.out.discard()


class Accuracy:
    """Top-1 / top-5 hits per true label."""

    def __init__(self, labels):
        self.labels = labels
        self.top1, self.top5, self.seen = collections.Counter(), collections.Counter(), collections.Counter()

    @property
    def labelled(self):
        return sum(self.seen.values()) > 0

    def add(self, label, predicted):
        if label is None:
            return
        self.seen[label] += 1
        self.top1[label] += predicted[0] == label
        self.top5[label] += label in predicted[:5]

    def accuracy(self):
        """{"top1": %, "top5": %, "images": n, "per_class": {label: {"images", "top1", "top5"}}}."""
        n = sum(self.seen.values())
        per_class = {label: {"images": self.seen[label], "top1": _pct(self.top1[label], self.seen[label]),
                             "top5": _pct(self.top5[label], self.seen[label])}
                     for label in self.labels if self.seen[label]}
        return {"images": n, "top1": _pct(sum(self.top1.values()), n), "top5": _pct(sum(self.top5.values()), n),
                "per_class": per_class}


def _checked_labels(items, known, labels_path):
    """Items unchanged; a labelled row whose label is not a class is an error naming its line."""
    for item in items:
        if not isinstance(item, BadRow) and item.label is not None and item.label not in known:
            raise InputError(f"{item.where}: label {item.label!r} is not one of the classes in {labels_path}")
        yield item


def _pct(count, n):
    return round(100.0 * count / n, 2) if n else 0.0


def _width(text):
    """Display width: wide (CJK) characters take two columns in a terminal."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
