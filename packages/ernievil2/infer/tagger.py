"""`python -m ernievil2 tag`: object tags for images, chosen zero-shot from a vocabulary, written as the tags file
the trainer's fourth view reads (`image_id \\t tag1,tag2,...`).

Each tag name becomes a class vector exactly as `zeroshot` builds them (prompt templates averaged, normalised).
The images are embedded by `embed` itself (streaming, worker processes, the bad-row policy, resumable chunks)
into `<output>.embeddings.npz`; then per image the tags are the `max_tags` most probable names whose
probability passes `threshold`.

Calibration: the probability is the softmax over the whole vocabulary of cosine x the model's own logit scale,
the very distribution the contrastive loss trained the model to produce for an image against many texts.  It is
a per-image quantity (no dependence on which other images are tagged, so a folder of product photos that all
show shoes still gets "鞋"), comparable across models (each brings its own scale) and bounded in [0, 1], so one
threshold means the same thing for any vocabulary size.  Several objects in one image share the mass, hence
the low default threshold.  (A per-tag z-score against the image population was the alternative; it was
rejected because it suppresses any tag that is common in the tagged collection.)
"""
import collections
import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..config import ConfigNode
from ..data.prompts import ZEROSHOT_TEMPLATES, read_templates
from ..data.tags import BUILTIN_VOCABULARY, format_tags_line, read_tag_vocabulary
from ..data.tokenizer import ErnieTokenizer
from ..errors import ConfigError, InputError
from ..fileio import atomic_path, read_strings, remove_stale_temps
from .engines import make_encoder
from .gallery import run_embed
from .options import EMBED_SCHEMA, TAG_SCHEMA, engine_options, load_query_config, pipeline_options
from .zeroshot import FALLBACK_LOGIT_SCALE, class_embeddings, classify

logger = logging.getLogger(__name__)

def load_tag_config(path, overrides=()):
    """An inference YAML with `images`, a tags output_file and the `tag` keys; errors name the key."""
    cfg = load_query_config(path, overrides, TAG_SCHEMA)
    source = path or "<config>"
    if not cfg.images:
        raise ConfigError(f"{source}: 'images' is not set (--images FOLDER|TSV or -o images=...)")
    if cfg.texts:
        raise ConfigError(f"{source}: 'texts' is not used by tag (it tags images)")
    if not cfg.output_file:
        raise ConfigError(f"{source}: 'output_file' is not set (--out TAGS.tsv or -o output_file=...)")
    if cfg.output_file.endswith((".npz", ".jsonl")):
        raise ConfigError(f"{source}: 'output_file' is the tags file (image_id \\t tags), got {cfg.output_file!r}")
    return cfg


def check_tokenisable(entries, tokenizer, vocabulary_path, vocab_file):
    """Every tag name must give at least one known token: a name that tokenises to nothing (only spaces,
    control characters) or only to [UNK] would make a class vector that says nothing about the name."""
    for line_no, name in entries:
        ids = tokenizer.text_to_ids(name)
        if not ids or all(i == tokenizer.unk_id for i in ids):
            what = "nothing" if not ids else "only [UNK]"
            raise InputError(f"{vocabulary_path}:{line_no}: tag {name!r} tokenises to {what} with "
                             f"{vocab_file}; remove it or use a vocabulary in the model's "
                             f"language (--vocab FILE)")


def choose_tags(image_embeddings, class_vectors, logit_scale, max_tags, threshold):
    """[(tag indices, probabilities)] per image: the at most `max_tags` most probable tags whose softmax
    probability over the vocabulary (at `logit_scale`) is at least `threshold`, best first."""
    order, probs = classify(image_embeddings, class_vectors, logit_scale, top_k=max_tags)
    return [(best[p >= threshold], p[p >= threshold]) for best, p in zip(order, probs)]


@dataclass
class TagSummary:
    images: int = 0
    tagged: int = 0
    untagged: int = 0            # embedded, but no tag passed the threshold (written with an empty tag list)
    seconds: float = 0.0
    skipped: dict = field(default_factory=dict)
    output_file: str = ""
    bad_row_log: str = ""
    vocabulary: str = ""
    vocabulary_size: int = 0
    tag_counts: collections.Counter = field(default_factory=collections.Counter)
    reused_items: int = 0
    repeated_ids: int = 0        # an image id met again (an image_id \\t base64 TSV may repeat one): first kept

    def lines(self):
        written = self.tagged + self.untagged
        mean = sum(self.tag_counts.values()) / written if written else 0.0
        out = [(f"images read: {self.images}, tagged: {self.tagged}, no tag above the threshold: {self.untagged}, "
                f"skipped: {sum(self.skipped.values())}"),
               f"vocabulary: {self.vocabulary} ({self.vocabulary_size} tags); {mean:.2f} tags per image",
               f"time: {self.seconds:.1f} s", f"tags: {self.output_file}"]
        if self.repeated_ids:
            out.append(f"{self.repeated_ids} image(s) with an id seen before: the first one's tags kept")
        if self.reused_items:
            out.append(f"resumed: reused {self.reused_items} images embedded by an earlier run")
        out += [f"  skipped {count} image(s): {reason}" for reason, count in sorted(self.skipped.items())]
        if self.bad_row_log:
            out.append(f"skipped images listed in {self.bad_row_log}")
        common = ", ".join(f"{tag} {count}" for tag, count in self.tag_counts.most_common(10))
        if common:
            out.append(f"most frequent: {common}")
        return out


def embeddings_path(output_file):
    return f"{output_file}.embeddings.npz"


def run_tag(cfg, encoder=None):
    """The `tag` command: cfg from load_tag_config; `encoder` (tests) replaces the configured one.  The
    vocabulary and prompts are checked before any image is read."""
    start = time.time()
    vocabulary = cfg.tag.vocabulary or BUILTIN_VOCABULARY
    entries = read_tag_vocabulary(vocabulary)
    templates = read_templates(cfg.tag.templates) if cfg.tag.templates else ZEROSHOT_TEMPLATES
    tokenizer = ErnieTokenizer.from_file(cfg.vocab_file)
    check_tokenisable(entries, tokenizer, vocabulary, cfg.vocab_file)
    names = [name for _, name in entries]
    encoder = encoder or make_encoder(engine_options(cfg))
    vectors = class_embeddings(encoder, tokenizer, names, templates, cfg.max_text_seqlen,
                               pipeline_options(cfg).batch_size)
    scale = encoder.logit_scale
    if scale is None:
        logger.warning("this export does not record the model's logit scale; probabilities use %s (export again "
                       "to record it)", FALLBACK_LOGIT_SCALE)
        scale = FALLBACK_LOGIT_SCALE

    npz = embeddings_path(cfg.output_file)
    embed_cfg = ConfigNode({key: value for key, value in cfg.items() if key in EMBED_SCHEMA})
    embed_cfg.update(output_file=npz, texts=None,
                     bad_row_log=cfg.bad_row_log or f"{cfg.output_file}.skipped.txt")
    embedded = run_embed(embed_cfg, encoder)
    summary = TagSummary(images=embedded.read, skipped=embedded.skipped, bad_row_log=embedded.bad_row_log,
                         output_file=cfg.output_file, vocabulary=vocabulary, vocabulary_size=len(names),
                         reused_items=embedded.reused)
    try:
        _write_tags(npz, vectors, scale, names, cfg, summary)
    finally:
        if not cfg.tag.keep_embeddings and os.path.exists(npz):
            os.remove(npz)
    summary.seconds = time.time() - start
    return summary


def _write_tags(npz, vectors, scale, names, cfg, summary, block=4096):
    remove_stale_temps(cfg.output_file)
    with np.load(npz) as z:
        ids, embeddings = read_strings(z, "ids"), z["embeddings"]
    seen = set()
    with atomic_path(cfg.output_file) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for first in range(0, len(ids), block):
            chosen = choose_tags(embeddings[first:first + block], vectors, scale, cfg.tag.max_tags,
                                 cfg.tag.threshold)
            for image_id, (indices, _) in zip(ids[first:first + block], chosen):
                image_id = str(image_id)
                if image_id in seen:
                    summary.repeated_ids += 1
                    continue
                seen.add(image_id)
                tags = [names[i] for i in indices]
                summary.tag_counts.update(tags)
                if tags:
                    summary.tagged += 1
                else:
                    summary.untagged += 1
                out.write(format_tags_line(image_id, tags))
        out.flush()
        os.fsync(out.fileno())
