"""The ``loss:`` section of a training config: which multi-view terms are on, their weights, the cross-modal
view pairing and the momentum queue (`losses` computes them).  Its keys are `LOSS_SCHEMA`, checked by the
generic schema like every other section; `LossConfig` is the typed copy the loss takes.  No Paddle here."""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from ..config import Field, Section, resolve
from ..data.prompts import TAG_PROMPT, TAG_SEPARATOR
from ..errors import ConfigError

TERMS = ("image_image", "text_text", "image_caption", "image_tags")
CROSS_MODAL_TERMS = ("image_caption", "image_tags")
MASK_MODES = ("none", "image", "caption", "both")


def _check_loss(loss):
    if all(loss.weights[t] == 0 for t in TERMS):
        raise ConfigError("every term weight is 0, nothing to train", where="weights")
    if loss.queue.enabled and not any(loss.weights[t] > 0 for t in loss.queue.terms):
        raise ConfigError(f"is true, but the queue only feeds {list(loss.queue.terms)}, whose weights are all 0",
                          where="queue.enabled")


LOSS_SCHEMA = Section({
    "weights": Section({term: Field(1.0, minimum=0.0, doc=f"weight of the {term} term; 0 turns it off")
                        for term in TERMS}),
    "cross_modal_image_view": Field(2, choices=(1, 2), doc="the image view of the cross-modal terms (paper: 2)"),
    "cross_modal_text_view": Field(1, choices=(1, 2), doc="the caption view of image_caption (paper: 1)"),
    "negatives": Field("full", choices=("full", "local"),
                       doc="full: every rank's rows are negatives; local: only this rank's"),
    "mask_duplicates": Field("image", choices=MASK_MODES,
                             doc="rows of the same image / caption are not used as negatives"),
    "max_logit_scale": Field(100.0, minimum=1.0, doc="exp(t) is clamped to [1, max_logit_scale]"),
    "tag_prompt": Field(TAG_PROMPT, doc="object-tag text = tag_prompt + tag_separator.join(tags)"),
    "tag_separator": Field(TAG_SEPARATOR),
    "queue": Section({
        "enabled": Field(False, doc="a momentum queue of extra negatives (MoCo style)"),
        "size": Field(16384, minimum=1, doc="queued rows; a multiple of the global batch (ours, not the paper's)"),
        "momentum": Field(0.999, minimum=0.0, below=1.0, doc="EMA factor of the momentum towers (MoCo's default)"),
        "terms": Field(list(CROSS_MODAL_TERMS), items=CROSS_MODAL_TERMS,
                       doc="cross-modal terms that receive the queue negatives"),
    }),
}, check=_check_loss, doc="the multi-view contrastive loss")


def _default(section, key):
    return section[key].default


@dataclass
class LossWeights:
    image_image: float = _default(LOSS_SCHEMA["weights"], "image_image")
    text_text: float = _default(LOSS_SCHEMA["weights"], "text_text")
    image_caption: float = _default(LOSS_SCHEMA["weights"], "image_caption")
    image_tags: float = _default(LOSS_SCHEMA["weights"], "image_tags")


@dataclass
class QueueConfig:
    enabled: bool = _default(LOSS_SCHEMA["queue"], "enabled")
    size: int = _default(LOSS_SCHEMA["queue"], "size")
    momentum: float = _default(LOSS_SCHEMA["queue"], "momentum")
    terms: Tuple[str, ...] = tuple(_default(LOSS_SCHEMA["queue"], "terms"))


@dataclass
class LossConfig:
    """Typed copy of the ``loss:`` section (defaults and checks: LOSS_SCHEMA)."""
    weights: LossWeights = field(default_factory=LossWeights)
    cross_modal_image_view: int = _default(LOSS_SCHEMA, "cross_modal_image_view")
    cross_modal_text_view: int = _default(LOSS_SCHEMA, "cross_modal_text_view")
    negatives: str = _default(LOSS_SCHEMA, "negatives")
    mask_duplicates: str = _default(LOSS_SCHEMA, "mask_duplicates")
    max_logit_scale: float = _default(LOSS_SCHEMA, "max_logit_scale")
    tag_prompt: str = _default(LOSS_SCHEMA, "tag_prompt")
    tag_separator: str = _default(LOSS_SCHEMA, "tag_separator")
    queue: QueueConfig = field(default_factory=QueueConfig)

    @classmethod
    def from_dict(cls, d: Optional[Mapping[str, Any]], source: str = "loss config") -> "LossConfig":
        """Check a plain mapping against LOSS_SCHEMA and build the typed copy; errors name the key, e.g.
        ``'loss.weights.x'``."""
        node = resolve(LOSS_SCHEMA, {} if d is None else d, source, prefix="loss.")
        top = {k: v for k, v in node.items() if k not in ("weights", "queue")}
        queue = QueueConfig(**{**node.queue, "terms": tuple(node.queue.terms)})
        return cls(weights=LossWeights(**node.weights), queue=queue, **top)

    def validate(self) -> None:
        """Re-check a LossConfig built or changed in code."""
        LossConfig.from_dict(self.to_dict())

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
