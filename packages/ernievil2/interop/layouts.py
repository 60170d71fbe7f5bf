"""Weight key layouts: the official one (ours) and PaddleNLP's `ErnieViLModel`, and the lossless conversion
between them.  Pure numpy; reading and writing files: `interop.convert`."""
import logging
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

OFFICIAL, PADDLENLP = "official", "paddlenlp"
PADDLENLP_PREFIX = "ernie_vil."

PADDLENLP_ONLY = (
    "text_model.embeddings.token_type_embeddings.weight",
    "text_model.embeddings.task_type_embeddings.weight",
)

_QKV = ("q", "k", "v")


@dataclass(frozen=True)
class _Rule:
    official: str
    paddlenlp: str
    kind: str = "rename"  # rename | class_embedding | positional_embedding | qkv


# Templates: {i} a layer index, {p} weight|bias, {j} 1|2, {a} q|k|v.  In a qkv rule, the PaddleNLP template has a
# {part} slot taking q, k and v.
_RULES = (
    _Rule("visual.patch_embed.proj.weight", "vision_model.conv1.weight"),
    _Rule("visual.class_embedding", "vision_model.class_embedding", "class_embedding"),
    _Rule("visual.positional_embedding", "vision_model.positional_embedding.weight", "positional_embedding"),
    _Rule("visual.norm_pre.{p}", "vision_model.ln_pre.{p}"),
    _Rule("visual.norm_post.{p}", "vision_model.ln_post.{p}"),
    _Rule("visual.blocks.{i}.norm{j}.{p}", "vision_model.transformer.layers.{i}.norm{j}.{p}"),
    _Rule("visual.blocks.{i}.attn.qkv.{p}", "vision_model.transformer.layers.{i}.self_attn.{part}_proj.{p}", "qkv"),
    _Rule("visual.blocks.{i}.attn.proj.{p}", "vision_model.transformer.layers.{i}.self_attn.out_proj.{p}"),
    _Rule("visual.blocks.{i}.mlp.fc{j}.{p}", "vision_model.transformer.layers.{i}.linear{j}.{p}"),
    _Rule("text_model.word_emb.weight", "text_model.embeddings.word_embeddings.weight"),
    _Rule("text_model.pos_emb.weight", "text_model.embeddings.position_embeddings.weight"),
    _Rule("text_model.ln.{p}", "text_model.embeddings.layer_norm.{p}"),
    _Rule("text_model.encoder_stack.block.{i}.attn.{a}.{p}", "text_model.encoder.layers.{i}.self_attn.{a}_proj.{p}"),
    _Rule("text_model.encoder_stack.block.{i}.attn.o.{p}", "text_model.encoder.layers.{i}.self_attn.out_proj.{p}"),
    _Rule("text_model.encoder_stack.block.{i}.ln{j}.{p}", "text_model.encoder.layers.{i}.norm{j}.{p}"),
    _Rule("text_model.encoder_stack.block.{i}.ffn.i.{p}", "text_model.encoder.layers.{i}.linear1.{p}"),
    _Rule("text_model.encoder_stack.block.{i}.ffn.o.{p}", "text_model.encoder.layers.{i}.linear2.{p}"),
    _Rule("text_model.pooler.{p}", "text_model.pooler.dense.{p}"),
    _Rule("contrastive_loss_mm.temperature_b", "temperature"),
)

_SLOTS = {"i": r"\d+", "p": "weight|bias", "j": "[12]", "a": "[qkv]", "part": "[qkv]"}


def _compile(template):
    pattern = re.escape(template)
    for slot, regex in _SLOTS.items():
        pattern = pattern.replace(re.escape("{" + slot + "}"), f"(?P<{slot}>{regex})")
    return re.compile(pattern + r"\Z")


_COMPILED = [(rule, _compile(rule.official), _compile(rule.paddlenlp)) for rule in _RULES]
_QKV_RULE = next(rule for rule in _RULES if rule.kind == "qkv")


def _match(name, layout):
    """(rule, slot values) for a key of `layout`, or None."""
    for rule, official_re, paddlenlp_re in _COMPILED:
        m = (official_re if layout == OFFICIAL else paddlenlp_re).match(name)
        if m:
            return rule, m.groupdict()
    return None


# ---------------------------------------------------------------- detection

def _strip_prefix(state):
    """Remove PaddleNLP's `ernie_vil.` base-model prefix when every key carries it."""
    if state and all(k.startswith(PADDLENLP_PREFIX) for k in state):
        return {k[len(PADDLENLP_PREFIX):]: v for k, v in state.items()}
    return state


def layout_counts(state):
    """How many keys of `state` each layout recognises (after removing an `ernie_vil.` prefix)."""
    state = _strip_prefix(state)
    return {layout: sum(1 for k in state if _match(k, layout) or (layout == PADDLENLP and k in PADDLENLP_ONLY))
            for layout in (OFFICIAL, PADDLENLP)}


def guess_layout(state):
    """'official', 'paddlenlp', or None when the keys are not clearly one of them (never raises)."""
    counts = layout_counts(state)
    if counts[OFFICIAL] and not counts[PADDLENLP]:
        return OFFICIAL
    if counts[PADDLENLP] and not counts[OFFICIAL]:
        return PADDLENLP
    return None


def detect_layout(state, source="<state dict>"):
    """'official' or 'paddlenlp'; a CheckpointError naming `source` for anything else."""
    counts = layout_counts(state)
    layout = guess_layout(state)
    if layout:
        return layout
    sample = ", ".join(list(state)[:5]) + (", ..." if len(state) > 5 else "")
    if counts[OFFICIAL] and counts[PADDLENLP]:
        raise CheckpointError(f"{source}: mixes keys of the official layout ({counts[OFFICIAL]}) and of PaddleNLP's "
                              f"ErnieViLModel ({counts[PADDLENLP]}); expected one or the other")
    raise CheckpointError(f"{source}: not ERNIE-ViL 2.0 weights in a known layout (neither the official names such as "
                          f"visual.blocks.0.attn.qkv.weight nor PaddleNLP's such as "
                          f"vision_model.transformer.layers.0.self_attn.q_proj.weight); its keys: {sample}")


# ---------------------------------------------------------------- conversion

@dataclass
class Conversion:
    state: dict
    source_layout: str
    target_layout: str
    dropped: list = field(default_factory=list)


def convert_state(state, target, drop_unknown=False, source="<state dict>"):
    """Convert `state` ({name: array}) to `target` ('official' or 'paddlenlp') from whichever layout it is in.
    Keys without a counterpart raise a CheckpointError naming them unless drop_unknown, in which case they are
    listed in the result's `dropped`.

    Both layouts hold the same network.  PaddleNLP 2.8.1's `ErnieViLModel(ErnieViLConfig())` has 398 tensors, the
    official Base file 350: the 12 fused `qkv` projections of the ViT become 36 separate q/k/v projections.
    Everything else is a rename, except two reshapes of the same numbers:
    `visual.class_embedding [1, 1, W]` <-> `vision_model.class_embedding [W]` and
    `visual.positional_embedding [1, P, W]` <-> `vision_model.positional_embedding.weight [P, W]`.
    Layer counts come from the keys, so Base and Large (ViT-L/14 + ERNIE 3.0 large, 24 layers) convert alike.
    The conversion only moves, splits, joins and reshapes arrays: official -> PaddleNLP -> official is bit-identical.

    Names without a counterpart are never dropped silently: the conversion fails and names them (or, when the
    caller asks for it with `drop_unknown=True` / `--drop-unknown`, lists every dropped name on stderr).
    Known ones:
      * PADDLENLP_ONLY: embeddings PaddleNLP's ErnieModel creates only when configured with `type_vocab_size > 0`
        or `use_task_id=True` (ERNIE-ViL 2.0's config has neither); the official tower has no such inputs.
    Every official tensor has a PaddleNLP home.
    PaddleNLP files whose keys carry the `ernie_vil.` base-model prefix (a wrapper around ErnieViLModel) are
    accepted; the prefix is removed.
    """
    if target not in (OFFICIAL, PADDLENLP):
        raise ConfigError(f"unknown target layout {target!r}; choose {OFFICIAL} or {PADDLENLP}")
    src_layout = detect_layout(state, source)
    state = _strip_prefix(state)
    if src_layout == target:
        return Conversion(dict(state), src_layout, target)
    out, unknown = {}, []
    pending_qkv = {}  # (layer, weight|bias) -> {part: array}, gathered when reading PaddleNLP keys
    for name, value in state.items():
        hit = _match(name, src_layout)
        if hit is None:
            unknown.append(name)
            continue
        rule, slots = hit
        if rule.kind == "qkv" and src_layout == PADDLENLP:
            fused_name = rule.official.format(**slots)
            out.setdefault(fused_name, None)  # keeps the key order; filled once q, k and v are all seen
            pending_qkv.setdefault((slots["i"], slots["p"]), {})[slots["part"]] = (name, value)
            continue
        dst_template = rule.paddlenlp if target == PADDLENLP else rule.official
        if rule.kind == "qkv":  # official fused [in, 3W] / [3W] -> three [in, W] / [W] along the output axis
            if value.shape[-1] % 3:
                raise CheckpointError(f"{source}: {name} has shape {list(value.shape)}; its last axis should hold "
                                      f"q, k and v (a multiple of 3)")
            for part, piece in zip(_QKV, np.split(value, 3, axis=-1)):
                out[dst_template.format(part=part, **slots)] = np.ascontiguousarray(piece)
            continue
        out[dst_template.format(**slots)] = _reshape(rule.kind, value, target, name, source)
    for (layer, param), parts in sorted(pending_qkv.items()):
        missing = [p for p in _QKV if p not in parts]
        if missing:
            names = [_QKV_RULE.paddlenlp.format(i=layer, p=param, part=p) for p in missing]
            raise CheckpointError(f"{source}: cannot rebuild the fused qkv of vision layer {layer}: "
                                  f"missing {', '.join(names)}")
        shapes = {p: parts[p][1].shape for p in _QKV}
        if len(set(shapes.values())) != 1:
            raise CheckpointError(f"{source}: the q/k/v {param}s of vision layer {layer} differ in shape "
                                  f"({', '.join(f'{p} {list(s)}' for p, s in shapes.items())})")
        fused = np.concatenate([parts[p][1] for p in _QKV], axis=-1)
        out[_QKV_RULE.official.format(i=layer, p=param)] = fused
    if unknown and not drop_unknown:
        known = [k for k in unknown if k in PADDLENLP_ONLY]
        hint = (f" ({', '.join(known)}: PaddleNLP-only embeddings the official text tower does not have)"
                if known else "")
        raise CheckpointError(f"{source}: {len(unknown)} key(s) of the {src_layout} layout have no counterpart in the "
                              f"{target} layout: {', '.join(unknown[:20])}{', ...' if len(unknown) > 20 else ''}"
                              f"{hint}. Nothing was converted; pass --drop-unknown (drop_unknown=True) to convert "
                              f"without them.")
    return Conversion(out, src_layout, target, dropped=unknown)


def _reshape(kind, value, target, name, source):
    if kind == "rename":
        return value
    rank = 1 if kind == "class_embedding" else 2  # of the PaddleNLP form; the official form adds leading 1s
    core = value.shape[-rank:]
    if value.ndim < rank or int(np.prod(value.shape)) != int(np.prod(core)):
        raise CheckpointError(f"{source}: {name} has shape {list(value.shape)}, expected "
                              f"{'[W] or [1, 1, W]' if rank == 1 else '[P, W] or [1, P, W]'}")
    if target == PADDLENLP:
        return value.reshape(core)
    return value.reshape((1,) * (3 - rank) + tuple(core))


def to_paddlenlp(state, drop_unknown=False, source="<state dict>"):
    """Official (or already PaddleNLP) weights -> PaddleNLP ErnieViLModel's state dict."""
    return _convert_and_report(state, PADDLENLP, drop_unknown, source)


def to_official(state, drop_unknown=False, source="<state dict>"):
    """PaddleNLP ErnieViLModel (or already official) weights -> the official layout this project uses."""
    return _convert_and_report(state, OFFICIAL, drop_unknown, source)


def _convert_and_report(state, target, drop_unknown, source):
    result = convert_state(state, target, drop_unknown=drop_unknown, source=source)
    if result.dropped:
        logger.warning("%s: dropped %d key(s) with no %s counterpart: %s", source, len(result.dropped), target,
                       ", ".join(result.dropped))
    return result.state


def layer_counts(state):
    """{'vision': n, 'text': m} layers present in an official- or PaddleNLP-layout state."""
    state = _strip_prefix(state)
    found = {"vision": set(), "text": set()}
    for name in state:
        m = re.match(r"(?:visual\.blocks|vision_model\.transformer\.layers)\.(\d+)\.", name)
        if m:
            found["vision"].add(int(m.group(1)))
        m = re.match(r"text_model\.(?:encoder_stack\.block|encoder\.layers)\.(\d+)\.", name)
        if m:
            found["text"].add(int(m.group(1)))
    return {tower: len(ids) for tower, ids in found.items()}
