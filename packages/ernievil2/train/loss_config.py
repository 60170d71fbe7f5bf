"""The ``loss:`` section of a training config: which multi-view terms are on, their weights, the cross-modal
view pairing and the momentum queue (`losses` computes them).  No Paddle here, so configs validate quickly."""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ..data.prompts import TAG_PROMPT, TAG_SEPARATOR
from ..errors import ConfigError

TERMS = ("image_image", "text_text", "image_caption", "image_tags")
CROSS_MODAL_TERMS = ("image_caption", "image_tags")
MASK_MODES = ("none", "image", "caption", "both")


class LossConfigError(ConfigError):
    """A bad ``loss:`` section; the message starts with the dotted path of the offending key."""


@dataclass
class LossWeights:
    image_image: float = 1.0
    text_text: float = 1.0
    image_caption: float = 1.0
    image_tags: float = 1.0


@dataclass
class QueueConfig:
    enabled: bool = False
    size: int = 16384      # ours, not from the BriVL paper; must be a multiple of the global batch
    momentum: float = 0.999  # EMA factor of the momentum towers (MoCo's default)
    terms: Tuple[str, ...] = CROSS_MODAL_TERMS  # cross-modal terms that receive the queue negatives


@dataclass
class LossConfig:
    """Mirror of the YAML ``loss:`` section (every key optional; defaults below)."""
    weights: LossWeights = field(default_factory=LossWeights)
    cross_modal_image_view: int = 2  # the paper's figure pairs image view 2 ...
    cross_modal_text_view: int = 1   # ... with text view 1
    negatives: str = "full"          # full | local (see module docstring)
    mask_duplicates: str = "image"   # none | image | caption | both: rows of the same image / text are no negatives
    max_logit_scale: float = 100.0   # clamp_logit_scale_ keeps exp(t) in [1, max_logit_scale]
    tag_prompt: str = TAG_PROMPT     # object-tag text = tag_prompt + tag_separator.join(tags)
    tag_separator: str = TAG_SEPARATOR
    queue: QueueConfig = field(default_factory=QueueConfig)

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]], prefix: str = "loss") -> "LossConfig":
        """Build and validate from a plain mapping; errors name the bad key, e.g. ``loss.weights.x``."""
        d = {} if d is None else d
        _expect_mapping(d, prefix)
        known = {f.name for f in dataclasses.fields(cls)}
        _reject_unknown(d, known, prefix)
        cfg = cls()
        if "weights" in d:
            w = d["weights"] if d["weights"] is not None else {}
            _expect_mapping(w, f"{prefix}.weights")
            _reject_unknown(w, set(TERMS), f"{prefix}.weights")
            for k, v in w.items():
                setattr(cfg.weights, k, _number(v, f"{prefix}.weights.{k}", low=0.0))
        for k in ("cross_modal_image_view", "cross_modal_text_view"):
            if k in d:
                if isinstance(d[k], bool) or d[k] not in (1, 2):
                    raise LossConfigError(f"{prefix}.{k}: must be 1 or 2, got {d[k]!r}")
                setattr(cfg, k, int(d[k]))
        if "negatives" in d:
            if d["negatives"] not in ("full", "local"):
                raise LossConfigError(f"{prefix}.negatives: must be 'full' or 'local', got {d['negatives']!r}")
            cfg.negatives = d["negatives"]
        if "mask_duplicates" in d:
            if d["mask_duplicates"] not in MASK_MODES:
                raise LossConfigError(f"{prefix}.mask_duplicates: must be one of {', '.join(MASK_MODES)}, "
                                      f"got {d['mask_duplicates']!r}")
            cfg.mask_duplicates = d["mask_duplicates"]
        if "max_logit_scale" in d:
            cfg.max_logit_scale = _number(d["max_logit_scale"], f"{prefix}.max_logit_scale", low=1.0)
        for k in ("tag_prompt", "tag_separator"):
            if k in d:
                if not isinstance(d[k], str):
                    raise LossConfigError(f"{prefix}.{k}: must be a string, got {d[k]!r}")
                setattr(cfg, k, d[k])
        if "queue" in d:
            cfg.queue = _queue_from_dict(d["queue"], f"{prefix}.queue")
        cfg.validate(prefix)
        return cfg

    def validate(self, prefix: str = "loss") -> None:
        if all(getattr(self.weights, t) == 0 for t in TERMS):
            raise LossConfigError(f"{prefix}.weights: every term weight is 0, nothing to train")
        if self.queue.enabled and not any(getattr(self.weights, t) > 0 for t in self.queue.terms):
            raise LossConfigError(f"{prefix}.queue.enabled: the queue only feeds {list(self.queue.terms)}, "
                                  f"whose weights are all 0")

    def term_views(self) -> Dict[str, Tuple[str, str]]:
        """The two views each term contrasts, e.g. image_caption -> ("image_view2", "text_view1")."""
        image_x = f"image_view{self.cross_modal_image_view}"
        return {"image_image": ("image_view1", "image_view2"), "text_text": ("text_view1", "text_view2"),
                "image_caption": (image_x, f"text_view{self.cross_modal_text_view}"),
                "image_tags": (image_x, "tags")}

    def needed_views(self):
        """The views the terms with a non-zero weight need (what the towers must encode)."""
        pairs = self.term_views()
        return {view for term in TERMS if getattr(self.weights, term) for view in pairs[term]}

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["queue"]["terms"] = list(d["queue"]["terms"])
        return d


def _queue_from_dict(q, qp):
    """The `loss.queue` mapping -> QueueConfig (errors name `qp.key`)."""
    q = {} if q is None else q
    queue = QueueConfig()
    _expect_mapping(q, qp)
    _reject_unknown(q, {f.name for f in dataclasses.fields(QueueConfig)}, qp)
    if "enabled" in q:
        if not isinstance(q["enabled"], bool):
            raise LossConfigError(f"{qp}.enabled: must be true or false, got {q['enabled']!r}")
        queue.enabled = q["enabled"]
    if "size" in q:
        if isinstance(q["size"], bool) or not isinstance(q["size"], int) or q["size"] <= 0:
            raise LossConfigError(f"{qp}.size: must be a positive integer, got {q['size']!r}")
        queue.size = q["size"]
    if "momentum" in q:
        m = _number(q["momentum"], f"{qp}.momentum", low=0.0)
        if m >= 1.0:
            raise LossConfigError(f"{qp}.momentum: must be in [0, 1), got {m!r}")
        queue.momentum = m
    if "terms" in q:
        terms = q["terms"]
        if isinstance(terms, str) or not isinstance(terms, Sequence):
            raise LossConfigError(f"{qp}.terms: must be a list, got {terms!r}")
        for t in terms:
            if t not in CROSS_MODAL_TERMS:
                raise LossConfigError(f"{qp}.terms: {t!r} is not one of {list(CROSS_MODAL_TERMS)}")
        queue.terms = tuple(terms)
    return queue


def _expect_mapping(d, path):
    if not isinstance(d, Mapping):
        raise LossConfigError(f"{path}: must be a mapping, got {type(d).__name__}")


def _reject_unknown(d, known, path):
    for k in d:
        if k not in known:
            raise LossConfigError(f"{path}.{k}: unknown key (expected one of {sorted(known)})")


def _number(v, path, low):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
        raise LossConfigError(f"{path}: must be a finite number >= {low}, got {v!r}")
    return float(v)
