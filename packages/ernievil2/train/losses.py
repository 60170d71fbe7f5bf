"""ERNIE-ViL 2.0's multi-view contrastive loss (README: "The loss"): symmetric InfoNCE terms over the global
batch, exact cross-rank negatives (`negatives: full | local`), the BriVL momentum queue, the temperature clamp.
Logits and softmax run in fp32 (autocast off inside, log-softmax), so the loss is safe under fp16/bf16 AMP."""
import copy
import math
from typing import Dict, Mapping, Optional, Tuple

import paddle
import paddle.nn.functional as F

from . import distributed as edist
from .loss_config import CROSS_MODAL_TERMS, TERMS, LossConfig


# ----------------------------------------------------------------------------------------------
# temperature
# ----------------------------------------------------------------------------------------------
@paddle.no_grad()
def clamp_logit_scale_(param: paddle.Tensor, max_scale: float = 100.0, min_scale: float = 1.0,
                       optimizer=None) -> paddle.Tensor:
    """Clip the log-scale parameter t in place to [ln min_scale, ln max_scale] (exp(t) in [1, 100]).

    Call after every optimizer step.  A clip inside the forward would not work: it zeroes the
    gradient while t keeps drifting, which is the official release's no-op clamp.  If the optimizer
    keeps an fp32 master copy of ``param`` (AMP O2, ``multi_precision``), pass it so the master copy is
    clipped too; otherwise the next step would restore the unclipped value.
    """
    lo, hi = math.log(min_scale), math.log(max_scale)
    param.set_value(paddle.clip(param, lo, hi))
    masters = getattr(optimizer, "_master_weights", None) or {}
    master = masters.get(param.name)
    if master is not None:
        master.set_value(paddle.clip(master, lo, hi))
    return param


# ----------------------------------------------------------------------------------------------
# momentum encoders and queue (BriVL / WenLan)
# ----------------------------------------------------------------------------------------------
def make_momentum_copy(layer: paddle.nn.Layer) -> paddle.nn.Layer:
    """A detached deep copy of ``layer`` for momentum keys: same values, no gradients."""
    m = copy.deepcopy(layer)
    for p in m.parameters():
        p.stop_gradient = True
    return m


@paddle.no_grad()
def momentum_update_(online: paddle.nn.Layer, momentum: paddle.nn.Layer, m: float) -> None:
    """EMA of parameters, in place: ``p_m = m * p_m + (1 - m) * p_online``.

    Buffers are left alone (as in MoCo; the ViT / ERNIE towers have none that train).  Parameters are
    paired by structured name, so the two layers must have the same architecture.
    """
    on = dict(online.named_parameters())
    mo = dict(momentum.named_parameters())
    if on.keys() != mo.keys():
        raise ValueError(f"momentum_update_: parameter names differ: "
                         f"{sorted(set(on) ^ set(mo))[:5]}")
    for name, pm in mo.items():
        po = on[name]
        pm.set_value(pm * m + po.astype(pm.dtype) * (1.0 - m))


class MomentumQueue(paddle.nn.Layer):
    """Ring buffers of past momentum keys, one per modality (persistable buffers, so they are saved).

    * ``image_queue``, ``text_queue``: ``[size, dim]`` fp32, L2-normalised keys.
    * ``ptr``: next row to write.  ``filled``: rows written so far (caps at ``size``).

    Only the first ``filled`` rows are used as negatives (:meth:`negatives`), so the zero rows of a
    fresh queue never act as negatives.  Rows are written in enqueue order; since ``size`` is a
    multiple of the batch, a batch never straddles the end of the buffer, and after wrapping around
    the oldest batch is overwritten first.

    Every rank must enqueue the same gathered (global) keys so that the queues stay identical; use
    :meth:`MultiViewContrastiveLoss.update_queue`, which gathers first.
    """

    def __init__(self, size: int, dim: int, global_batch: Optional[int] = None):
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"MomentumQueue: size and dim must be positive, got {size}, {dim}")
        self.size, self.dim = int(size), int(dim)
        if global_batch is not None:
            self._check_batch(global_batch)
        dtype = _compute_dtype(paddle.get_default_dtype())
        self.register_buffer("image_queue", paddle.zeros([self.size, self.dim], dtype), persistable=True)
        self.register_buffer("text_queue", paddle.zeros([self.size, self.dim], dtype), persistable=True)
        self.register_buffer("ptr", paddle.zeros([1], "int64"), persistable=True)
        self.register_buffer("filled", paddle.zeros([1], "int64"), persistable=True)
        # identities of the queued rows (image id and caption keys), for loss.mask_duplicates
        self.register_buffer("image_ids", paddle.zeros([self.size], "int64"), persistable=True)
        self.register_buffer("caption_ids", paddle.zeros([self.size], "int64"), persistable=True)

    def _check_batch(self, n: int) -> None:
        if n <= 0 or self.size % n != 0:
            raise ValueError(f"loss.queue.size ({self.size}) must be a multiple of the global batch "
                             f"size ({n} = per-rank batch x world size)")

    @paddle.no_grad()
    def enqueue(self, image_keys: paddle.Tensor, text_keys: paddle.Tensor, image_ids=None, caption_ids=None) -> None:
        """Write a batch of global keys ``[n, dim]`` at ``ptr`` (normalised here), with the rows' image and
        caption identities ``[n]`` when given, and advance."""
        n = image_keys.shape[0]
        if text_keys.shape[0] != n:
            raise ValueError(f"enqueue: {n} image keys but {text_keys.shape[0]} text keys")
        for k in (image_keys, text_keys):
            if k.ndim != 2 or k.shape[1] != self.dim:
                raise ValueError(f"enqueue: keys must be [n, {self.dim}], got {list(k.shape)}")
        self._check_batch(n)
        p = int(self.ptr.item())
        rows = paddle.arange(p, p + n, dtype="int64")
        # Out of place (scatter + rebind): the previous buffers may still be held by the autograd graph
        # of a loss that has not run backward yet, and an in-place write would invalidate it.
        self.image_queue = paddle.scatter(self.image_queue, rows, _unit(image_keys), overwrite=True)
        self.text_queue = paddle.scatter(self.text_queue, rows, _unit(text_keys), overwrite=True)
        for name, values in (("image_ids", image_ids), ("caption_ids", caption_ids)):
            if values is not None:
                setattr(self, name, paddle.scatter(getattr(self, name), rows, values.astype("int64"), overwrite=True))
        self.ptr = paddle.full([1], (p + n) % self.size, "int64")
        self.filled = paddle.full([1], min(int(self.filled.item()) + n, self.size), "int64")

    def identities(self) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """``(image_ids, caption_ids)`` of the filled rows (what negatives() returns the keys of)."""
        f = int(self.filled.item())
        return self.image_ids[:f], self.caption_ids[:f]

    def negatives(self) -> Optional[Tuple[paddle.Tensor, paddle.Tensor]]:
        """``(image_keys, text_keys)`` of the filled rows, or None while the queue is empty."""
        f = int(self.filled.item())
        if f == 0:
            return None
        return self.image_queue[:f].detach(), self.text_queue[:f].detach()


def _compute_dtype(dtype) -> str:
    """Losses run in float32, or in float64 when the model does (the trainer's `dtype: float64`); half-precision
    embeddings from AMP are promoted to float32."""
    return "float64" if str(dtype).endswith("float64") else "float32"


def _unit(x: paddle.Tensor) -> paddle.Tensor:
    return F.normalize(x.astype(_compute_dtype(x.dtype)), axis=-1)


# ----------------------------------------------------------------------------------------------
# the loss
# ----------------------------------------------------------------------------------------------
def _ce_diag(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """Mean cross-entropy of each row against its label column, via log-softmax (stable)."""
    logp = F.log_softmax(logits, axis=1)
    return -paddle.take_along_axis(logp, labels.unsqueeze(1), axis=1).mean()


def symmetric_infonce(a_q, b_q, a_all, b_all, scale, labels, a_neg=None, b_neg=None, excluded=None,
                      excluded_neg=None):
    """(CE(a_q -> [b_all; b_neg]) + CE(b_q -> [a_all; a_neg])) / 2, inputs already unit-norm fp32.

    ``a_q``/``b_q`` are the query rows (all N in full mode, this rank's B in local mode), ``labels``
    their positive columns in ``a_all``/``b_all``; ``a_neg``/``b_neg`` optional extra negative keys.
    ``excluded`` [Q, N] / ``excluded_neg`` [Q, queue] (bool) take columns out of both softmax denominators:
    other rows of the same image or text, which are not negatives.
    """
    ab = paddle.matmul(a_q, b_all, transpose_y=True)
    if a_neg is None and b_neg is None and a_q is a_all and b_q is b_all:
        ba = ab.T  # full mode without queue: one matmul serves both directions
    else:
        ba = paddle.matmul(b_q, a_all, transpose_y=True)
    if excluded is not None:
        ab, ba = _exclude(ab, excluded), _exclude(ba, excluded)
    if b_neg is not None:
        ab = paddle.concat([ab, _exclude(paddle.matmul(a_q, b_neg, transpose_y=True), excluded_neg)], axis=1)
    if a_neg is not None:
        ba = paddle.concat([ba, _exclude(paddle.matmul(b_q, a_neg, transpose_y=True), excluded_neg)], axis=1)
    return 0.5 * (_ce_diag(scale * ab, labels) + _ce_diag(scale * ba, labels))


def _exclude(similarities, excluded):
    """Excluded entries get a similarity so low that exp(scale x it) is 0 in fp32 (scale >= 1)."""
    if excluded is None:
        return similarities
    return paddle.where(excluded, paddle.full_like(similarities, -1e4), similarities)


class MultiViewContrastiveLoss(paddle.nn.Layer):
    """ERNIE-ViL 2.0's multi-view contrastive loss (see the module docstring).

    Args:
        config: a :class:`LossConfig` or a plain dict of the YAML ``loss:`` section.
        embed_dim: embedding width; required when the queue is enabled (sizes its buffers).
        global_batch: optional per-rank batch x world size, to reject a bad queue size at
            construction rather than at the first enqueue.

    The queue (``self.queue``, a :class:`MomentumQueue`, only when enabled) is a sub-layer, so its
    buffers are in this layer's ``state_dict``: save and restore that with the checkpoint.
    """

    def __init__(self, config=None, embed_dim: Optional[int] = None, global_batch: Optional[int] = None):
        super().__init__()
        if config is None or isinstance(config, Mapping):
            config = LossConfig.from_dict(config)
        config.validate()
        self.config = config
        self.weights = {t: float(getattr(config.weights, t)) for t in TERMS}
        self.queue = None
        if config.queue.enabled:
            if embed_dim is None:
                raise ValueError("MultiViewContrastiveLoss: embed_dim is required when loss.queue.enabled")
            self.queue = MomentumQueue(config.queue.size, embed_dim, global_batch)

    def active_terms(self):
        return [t for t in TERMS if self.weights[t] > 0]

    def forward(self, image_view1=None, image_view2=None, text_view1=None, text_view2=None, tags=None,
                temperature=None, queue_keys=None, identities=None) -> Dict[str, paddle.Tensor]:
        """Compute every active term on this rank's ``[B, D]`` embeddings (raw, normalised here).

        Args:
            image_view1, image_view2: image tower outputs for the two augmentations.
            text_view1, text_view2: text tower outputs for two dropout passes of the caption.
            tags: text tower output for the object-tag text.
            temperature: the parameter t (shape [1]); logit scale = exp(t).
            queue_keys: optional ``(image_keys, text_keys)`` extra negatives, overriding ``self.queue``.
                Treated as unit vectors (MomentumQueue stores them normalised).
            identities: optional ``{"image", "caption", "tags"}`` int64 ``[B]`` keys of this rank's rows; with
                ``loss.mask_duplicates`` other rows of the same image (or the same text) are taken out of the
                cross-modal terms' negatives, in the batch and in the queue.  None: no masking.
        An input may be None when no active term needs it.

        Returns:
            dict with ``loss`` (sum of weight x term), each active term unweighted under its name, and
            ``logit_scale`` (exp(t), detached).  Values are the global loss on every rank.
        """
        if temperature is None:
            raise ValueError("MultiViewContrastiveLoss: temperature (the log logit scale t) is required")
        given = {"image_view1": image_view1, "image_view2": image_view2, "text_view1": text_view1,
                 "text_view2": text_view2, "tags": tags}
        needed = self._needed_views(given)
        active = self.active_terms()
        own_queue = queue_keys is None and self.queue is not None
        if own_queue:
            queue_keys = self.queue.negatives()
        with paddle.amp.auto_cast(enable=False):
            local, everyone = self._gather(given, needed)
            queries, labels = self._queries(local, everyone)
            scale = paddle.exp(temperature.astype(_compute_dtype(temperature.dtype)))
            masks = self._duplicate_masks(identities, labels, own_queue and queue_keys is not None)
            terms = {t: self._term(t, queries, everyone, scale, labels, queue_keys, masks.get(t, (None, None)))
                     for t in active}
            terms = self._as_global_values(terms)
            total = paddle.add_n([terms[t] * self.weights[t] for t in active])
        out = {"loss": total}
        out.update(terms)
        out["logit_scale"] = scale.detach().reshape([])
        return out

    def _needed_views(self, given):
        """The views the active terms need, in a fixed order; a missing one is an error naming its term."""
        pairs = self.config.term_views()
        needed = []
        for t in self.active_terms():
            for v in pairs[t]:
                if given[v] is None:
                    raise ValueError(f"MultiViewContrastiveLoss: term {t} (weight {self.weights[t]}) needs {v}")
                if v not in needed:
                    needed.append(v)
        return needed

    @staticmethod
    def _gather(given, needed):
        """({view: this rank's unit rows}, {view: every rank's unit rows}), with one collective for all views:
        concatenated along the feature axis, gathered, split back."""
        local = {v: _unit(given[v]) for v in needed}
        rows = local[needed[0]].shape[0]
        for v in needed:
            if local[v].shape[0] != rows:
                raise ValueError(f"MultiViewContrastiveLoss: {v} has {local[v].shape[0]} rows, "
                                 f"{needed[0]} has {rows}")
        widths = [local[v].shape[1] for v in needed]
        gathered = edist.all_gather_with_grad(paddle.concat([local[v] for v in needed], axis=1))
        return local, dict(zip(needed, paddle.split(gathered, widths, axis=1)))

    def _queries(self, local, everyone):
        """The query rows and their positive columns: all N rows (`full`) or this rank's B rows (`local`)."""
        any_view = next(iter(everyone.values()))
        if self.config.negatives == "full":
            return everyone, paddle.arange(any_view.shape[0], dtype="int64")
        rows = next(iter(local.values())).shape[0]
        start = edist.get_rank() * rows
        return local, paddle.arange(start, start + rows, dtype="int64")

    def _term(self, term, queries, everyone, scale, labels, queue_keys, excluded):
        a, b = self.config.term_views()[term]
        a_neg = b_neg = None
        if queue_keys is not None and term in self.config.queue.terms and term in CROSS_MODAL_TERMS:
            dtype = scale.dtype
            a_neg = queue_keys[0].astype(dtype)  # image keys: negatives for text queries
            b_neg = queue_keys[1].astype(dtype)  # text keys: negatives for image queries
        batch_mask, queue_mask = excluded
        return symmetric_infonce(queries[a], queries[b], everyone[a], everyone[b], scale, labels,
                                 a_neg=a_neg, b_neg=b_neg, excluded=batch_mask,
                                 excluded_neg=queue_mask if a_neg is not None else None)

    @paddle.no_grad()
    def _duplicate_masks(self, identities, labels, with_queue):
        """{cross-modal term: (batch mask [Q, N], queue mask [Q, queue] or None)}: True for columns that are
        another row of the query's image (mode image) or carry its text (mode caption); never its positive."""
        mode = self.config.mask_duplicates
        if identities is None or mode == "none":
            return {}
        ids = {k: edist.all_gather_no_grad(v.astype("int64").reshape([-1])) for k, v in identities.items()}
        n = ids["image"].shape[0]
        rows = labels  # the queries' own rows in the gathered batch
        positive = labels.unsqueeze(1) == paddle.arange(n, dtype="int64").unsqueeze(0)
        queued = self.queue.identities() if with_queue else None
        masks = {}
        for term, text in (("image_caption", "caption"), ("image_tags", "tags")):
            same = paddle.zeros([rows.shape[0], n], "bool")
            in_queue = paddle.zeros([rows.shape[0], queued[0].shape[0]], "bool") if queued else None
            for kind, on in (("image", mode in ("image", "both")), (text, mode in ("caption", "both"))):
                if not on:
                    continue
                mine = paddle.gather(ids[kind], rows).unsqueeze(1)
                same = same | (mine == ids[kind].unsqueeze(0))
                if queued:  # the queue holds captions: texts compare by caption
                    stored = queued[0] if kind == "image" else queued[1]
                    key = mine if kind == "image" else paddle.gather(ids["caption"], rows).unsqueeze(1)
                    in_queue = in_queue | (key == stored.unsqueeze(0))
            masks[term] = (same & ~positive, in_queue)
        return masks

    def _as_global_values(self, terms):
        """In `local` mode across ranks, report each term's global value (the mean over ranks) without touching
        the local gradients: value = global, d/dx = d(local)/dx."""
        if self.config.negatives != "local" or not edist.is_distributed():
            return terms
        names = list(terms)
        stacked = paddle.stack([terms[t] for t in names])
        delta = (edist.all_reduce_mean_no_grad(stacked) - stacked.detach()).unbind(0)
        return {t: terms[t] + d for t, d in zip(names, delta)}

    @paddle.no_grad()
    def update_queue(self, image_keys: paddle.Tensor, text_keys: paddle.Tensor, identities=None) -> None:
        """Gather this rank's momentum keys ``[B, D]`` (and the rows' identities, see forward) from all ranks
        and enqueue them (the same on every rank).

        Call once per step after the loss has been computed (keys of the momentum towers: the image
        view used for the cross-modal terms, and the caption text view).
        """
        if self.queue is None:
            raise RuntimeError("update_queue: loss.queue.enabled is false")
        gathered = {k: edist.all_gather_no_grad(v.astype("int64").reshape([-1]))
                    for k, v in (identities or {}).items()}
        dtype = _compute_dtype(image_keys.dtype)
        self.queue.enqueue(edist.all_gather_no_grad(image_keys.astype(dtype)),
                           edist.all_gather_no_grad(text_keys.astype(dtype)),
                           gathered.get("image"), gathered.get("caption"))
