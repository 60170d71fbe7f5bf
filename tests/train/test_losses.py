"""Tests of ernievil2.train.losses / ernievil2.train.distributed against an independent float64 NumPy reference.

The reference (``ref_pair``) writes the symmetric InfoNCE and its analytic gradients out by hand and is
itself checked against central finite differences, so the Paddle module is compared with something
that does not share its code path.  The distributed test launches 2 CPU processes (gloo).
"""
import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from ernievil2.data.prompts import tag_text
from ernievil2.errors import ConfigError
from ernievil2.model.configs import INITIAL_TEMPERATURE
from ernievil2.train import loss_config as LC
from ernievil2.train import losses as L

HERE = os.path.dirname(os.path.abspath(__file__))
VIEWS = ("image_view1", "image_view2", "text_view1", "text_view2", "tags")
PAIRS = {"image_image": ("image_view1", "image_view2"), "text_text": ("text_view1", "text_view2")}


# ----------------------------------------------------------------------------------------------
# NumPy reference (float64)
# ----------------------------------------------------------------------------------------------
def _log_softmax_rows(z):
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def ref_pair(a, b, t, a_neg=None, b_neg=None):
    """Symmetric InfoNCE of raw a, b [N, D]; returns (loss, dL/da, dL/db, dL/dt).

    a->b rows score [b ; b_neg], b->a rows score [a ; a_neg]; negatives are taken as given (unit).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = a.shape[0]
    na, nb = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
    A, B = a / na, b / nb
    s = math.exp(t)
    Bx = B if b_neg is None else np.vstack([B, np.asarray(b_neg, np.float64)])
    Ax = A if a_neg is None else np.vstack([A, np.asarray(a_neg, np.float64)])
    loss, grads_logits, logits = 0.0, [], []
    for Q, K in ((A, Bx), (B, Ax)):
        z = s * Q @ K.T
        lp = _log_softmax_rows(z)
        loss += 0.5 * -np.mean(lp[np.arange(n), np.arange(n)])
        g = np.exp(lp)
        g[np.arange(n), np.arange(n)] -= 1.0
        grads_logits.append(0.5 * g / n)  # d(0.5 * mean CE)/dz
        logits.append(z)
    g_ab, g_ba = grads_logits
    dA = s * (g_ab @ Bx + g_ba[:, :n].T @ B)
    dB = s * (g_ba @ Ax + g_ab[:, :n].T @ A)
    dt = float((g_ab * logits[0]).sum() + (g_ba * logits[1]).sum())  # dz/dt = z
    # through the L2 normalisation: d(x/|x|) = (I - u u^T) / |x|
    da = (dA - A * (A * dA).sum(axis=1, keepdims=True)) / na
    db = (dB - B * (B * dB).sum(axis=1, keepdims=True)) / nb
    return loss, da, db, dt


def ref_multiview(x, weights, t, image_view=2, text_view=1, queue=None, queue_terms=LC.CROSS_MODAL_TERMS):
    """All terms on the dict of raw views ``x``; returns (terms, total, grads by view, dt)."""
    pairs = dict(PAIRS, image_caption=(f"image_view{image_view}", f"text_view{text_view}"),
                 image_tags=(f"image_view{image_view}", "tags"))
    terms, grads, total, dt = {}, {v: np.zeros_like(x[v], np.float64) for v in x}, 0.0, 0.0
    for name, w in weights.items():
        if w == 0:
            continue
        a, b = pairs[name]
        q = queue if name in queue_terms else None
        loss, da, db, dtt = ref_pair(x[a], x[b], t, *(q if q is not None else (None, None)))
        terms[name] = loss
        total += w * loss
        grads[a] += w * da
        grads[b] += w * db
        dt += w * dtt
    return terms, total, grads, dt


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _views(rng, n=6, d=4, scale=1.0):
    return {v: (scale * rng.standard_normal((n, d))).astype(np.float32) for v in VIEWS}


def _temperature(value=INITIAL_TEMPERATURE):
    return paddle.create_parameter([1], dtype="float32",
                                   default_initializer=paddle.nn.initializer.Constant(value))


def _run(loss_fn, x, t_value=INITIAL_TEMPERATURE, dtype="float32", queue_keys=None):
    """Forward + backward of the Paddle module; returns (outputs as floats, input grads, dt)."""
    ts = {v: paddle.to_tensor(x[v]).astype(dtype) for v in x}
    for v in ts:
        ts[v].stop_gradient = False
    t = _temperature(t_value)
    out = loss_fn(**ts, temperature=t, queue_keys=queue_keys)
    out["loss"].backward()
    # a view no active term uses gets no gradient at all (None): compare as zeros
    grads = {v: (np.zeros(x[v].shape, np.float32) if ts[v].grad is None else ts[v].grad.astype("float32").numpy())
             for v in ts}
    return {k: float(v) for k, v in out.items()}, grads, float(t.grad.numpy()[0]), out


# ----------------------------------------------------------------------------------------------
# the reference itself
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_queue", [False, True])
def test_reference_gradients_match_finite_differences(with_queue):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    neg = (_unit(rng.standard_normal((5, 3))), _unit(rng.standard_normal((5, 3)))) if with_queue else (None, None)
    t = 1.3
    _, da, db, dt = ref_pair(a, b, t, *neg)
    eps = 1e-6
    for x, g in ((a, da), (b, db)):
        num = np.zeros_like(x)
        for idx in np.ndindex(*x.shape):
            old = x[idx]
            x[idx] = old + eps
            up = ref_pair(a, b, t, *neg)[0]
            x[idx] = old - eps
            down = ref_pair(a, b, t, *neg)[0]
            x[idx] = old
            num[idx] = (up - down) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-8)
    num_t = (ref_pair(a, b, t + eps, *neg)[0] - ref_pair(a, b, t - eps, *neg)[0]) / (2 * eps)
    assert abs(dt - num_t) < 1e-7


def test_reference_matches_closed_form_for_orthonormal_pairs():
    # a == b == identity rows: every logit is s on the diagonal and 0 elsewhere.
    e = np.eye(4)
    s = 5.0
    loss = ref_pair(e, e, math.log(s))[0]
    assert loss == pytest.approx(-math.log(math.exp(s) / (math.exp(s) + 3)), rel=1e-12)


# ----------------------------------------------------------------------------------------------
# values and gradients of each term
# ----------------------------------------------------------------------------------------------
def fp32_dt_error_bound(x, weights, t, image_view=2, text_view=1, queue=None, queue_terms=LC.CROSS_MODAL_TERMS):
    """First-order bound on the fp32 error of dL/dt, derived from the inputs themselves (in float64).

    dL/dt = sum over terms and directions of sum_ij g_ij z_ij, with z = s * <u_i, v_j> and g = (p - I) / (2n).
    In fp32 each logit carries an error of at most s * (D + 4) * u (a D-term dot product of unit vectors plus
    their normalisation) + |z| * u (the scale exp(t)), u = 2**-24, and d(sum_j g_ij z_ij)/dz_ik =
    (p_ik - [i == k] + p_ik (z_ik - sum_j p_ij z_ij)) / (2n); the bound is sum |derivative| x |logit error|, plus
    the rounding of the final sums.  It grows with the spread of the logits: with how ill-conditioned the
    inputs make the gradient."""
    u = 2.0 ** -24
    s = math.exp(t)
    pairs = dict(PAIRS, image_caption=(f"image_view{image_view}", f"text_view{text_view}"),
                 image_tags=(f"image_view{image_view}", "tags"))
    bound = 0.0
    for name, w in weights.items():
        if w == 0:
            continue
        a, b = (_unit(np.asarray(x[v], np.float64)) for v in pairs[name])
        a_neg, b_neg = queue if queue is not None and name in queue_terms else (None, None)
        n, d = a.shape
        for q, k, neg in ((a, b, b_neg), (b, a, a_neg)):
            keys = k if neg is None else np.vstack([k, np.asarray(neg, np.float64)])
            z = s * q @ keys.T
            p = np.exp(_log_softmax_rows(z))
            target = np.eye(n, keys.shape[0])
            mean_z = (p * z).sum(axis=1, keepdims=True)
            deriv = (p - target + p * (z - mean_z)) / (2 * n)
            # the sums themselves: blocked/pairwise summation of z.size terms
            summed = (math.ceil(math.log2(z.size)) + 1) * u * np.abs((p - target) * z / (2 * n)).sum()
            bound += w * ((np.abs(deriv) * (s * (d + 4) * u + np.abs(z) * u)).sum() + summed)
    return bound


def _close_dt(dt, ref_dt, bound):
    assert abs(dt - ref_dt) <= bound, (dt, ref_dt, bound)


def _close(actual, expected):
    np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("term", LC.TERMS)
@pytest.mark.parametrize("negatives", ["full", "local"])
def test_single_term_value_and_gradients(term, negatives):
    rng = np.random.default_rng(1)
    x = _views(rng)
    weights = {t: (1.0 if t == term else 0.0) for t in LC.TERMS}
    loss_fn = L.MultiViewContrastiveLoss({"weights": weights, "negatives": negatives})
    out, grads, dt, _ = _run(loss_fn, x, t_value=1.7)
    terms, total, ref_grads, ref_dt = ref_multiview(x, weights, 1.7)
    assert set(out) == {"loss", term, "logit_scale"}  # inactive terms are not reported
    _close(out[term], terms[term])
    _close(out["loss"], total)
    assert out["logit_scale"] == pytest.approx(math.exp(1.7), rel=1e-6)
    for v in VIEWS:
        _close(grads[v], ref_grads[v])  # untouched views must get exactly zero
    _close_dt(dt, ref_dt, fp32_dt_error_bound(x, weights, 1.7))


@pytest.mark.parametrize("image_view,text_view", [(2, 1), (1, 1), (1, 2)])
@pytest.mark.parametrize("with_queue", [False, True])
def test_weighted_total_and_pairing(image_view, text_view, with_queue):
    rng = np.random.default_rng(2)
    x = _views(rng, n=5, d=6)
    weights = {"image_image": 0.5, "text_text": 0.25, "image_caption": 1.5, "image_tags": 0.75}
    queue = (_unit(rng.standard_normal((7, 6))), _unit(rng.standard_normal((7, 6)))) if with_queue else None
    loss_fn = L.MultiViewContrastiveLoss({"weights": weights, "cross_modal_image_view": image_view,
                                          "cross_modal_text_view": text_view})
    qk = None if queue is None else tuple(paddle.to_tensor(q.astype(np.float32)) for q in queue)
    out, grads, dt, _ = _run(loss_fn, x, queue_keys=qk)
    terms, total, ref_grads, ref_dt = ref_multiview(x, weights, INITIAL_TEMPERATURE, image_view, text_view, queue)
    for t in LC.TERMS:
        _close(out[t], terms[t])
    _close(out["loss"], total)
    for v in VIEWS:
        _close(grads[v], ref_grads[v])
    _close_dt(dt, ref_dt, fp32_dt_error_bound(x, weights, INITIAL_TEMPERATURE, image_view, text_view, queue))


def test_default_pairing_is_image_view2_with_text_view1():
    rng = np.random.default_rng(3)
    x = _views(rng)
    weights = {"image_image": 0.0, "text_text": 0.0, "image_caption": 1.0, "image_tags": 0.0}
    out = _run(L.MultiViewContrastiveLoss({"weights": weights}), x)[0]
    assert out["image_caption"] == pytest.approx(ref_pair(x["image_view2"], x["text_view1"], INITIAL_TEMPERATURE)[0],
                                                 rel=1e-5)
    assert out["image_caption"] != pytest.approx(ref_pair(x["image_view1"], x["text_view1"],
                                                          INITIAL_TEMPERATURE)[0], rel=1e-3)


def test_queue_only_feeds_configured_terms():
    rng = np.random.default_rng(4)
    x = _views(rng)
    queue = (_unit(rng.standard_normal((6, 4))), _unit(rng.standard_normal((6, 4))))
    qk = tuple(paddle.to_tensor(q.astype(np.float32)) for q in queue)
    cfg = {"queue": {"terms": ["image_tags"]}}
    out = _run(L.MultiViewContrastiveLoss(cfg), x, queue_keys=qk)[0]
    w = {t: 1.0 for t in LC.TERMS}
    terms = ref_multiview(x, w, INITIAL_TEMPERATURE, queue=queue, queue_terms=("image_tags",))[0]
    for t in LC.TERMS:
        _close(out[t], terms[t])
    # intra-modal terms never see the queue, and the queue does change the terms it feeds
    assert terms["image_tags"] != pytest.approx(ref_pair(x["image_view2"], x["tags"], INITIAL_TEMPERATURE)[0], rel=1e-3)


def test_missing_view_for_active_term_raises_and_unused_may_be_none():
    rng = np.random.default_rng(5)
    x = _views(rng)
    loss_fn = L.MultiViewContrastiveLoss({"weights": {"text_text": 0.0, "image_image": 0.0, "image_tags": 0.0}})
    t = _temperature()
    out = loss_fn(image_view2=paddle.to_tensor(x["image_view2"]), text_view1=paddle.to_tensor(x["text_view1"]),
                  temperature=t)
    assert set(out) == {"loss", "image_caption", "logit_scale"}
    with pytest.raises(ValueError, match="image_caption.*text_view1"):
        loss_fn(image_view2=paddle.to_tensor(x["image_view2"]), temperature=t)


def test_stable_with_max_scale_and_huge_inputs():
    # Scale 100, inputs of norm ~1e4, near-duplicate rows: a naive exp would overflow in fp32.
    rng = np.random.default_rng(6)
    base = rng.standard_normal((1, 8))
    x = {v: (1e4 * (base + 1e-2 * rng.standard_normal((6, 8)))).astype(np.float32) for v in VIEWS}
    t = math.log(100.0)
    weights = {k: 1.0 for k in LC.TERMS}
    out, grads, dt, _ = _run(L.MultiViewContrastiveLoss(), x, t_value=t)
    terms, total, ref_grads, ref_dt = ref_multiview(x, weights, t)
    assert all(np.isfinite(v) for v in out.values())
    np.testing.assert_allclose(out["loss"], total, rtol=1e-4)
    for v in VIEWS:
        assert np.all(np.isfinite(grads[v]))
        np.testing.assert_allclose(grads[v], ref_grads[v], rtol=1e-2, atol=1e-8)
    # The rows are near-duplicates, so dL/dt is a small difference of large logits: fp32 cancellation makes its
    # error input-dependent (measured 1%, bounded by about 50% here), hence a tolerance derived from the inputs
    # rather than a fixed rtol.
    bound = fp32_dt_error_bound(x, weights, t)
    assert bound < abs(ref_dt)  # a worst-case bound, yet it still pins the sign of dL/dt
    _close_dt(dt, ref_dt, bound)


@pytest.mark.filterwarnings("ignore:amp_guard can only be enabled")  # autocast is a no-op on CPU
@pytest.mark.parametrize("dtype,autocast", [("float16", None), ("bfloat16", "bfloat16")])
def test_low_precision_inputs_give_fp32_loss(dtype, autocast):
    rng = np.random.default_rng(7)
    x = _views(rng)
    # the reference sees exactly the rounded inputs the module gets
    rounded = {v: paddle.to_tensor(x[v]).astype(dtype).astype("float32").numpy() for v in x}
    loss_fn = L.MultiViewContrastiveLoss()
    if autocast:
        with paddle.amp.auto_cast(dtype=autocast):
            out, grads, dt, raw = _run(loss_fn, x, dtype=dtype)
    else:
        out, grads, dt, raw = _run(loss_fn, x, dtype=dtype)
    assert raw["loss"].dtype == paddle.float32
    terms, total, ref_grads, ref_dt = ref_multiview(rounded, {k: 1.0 for k in LC.TERMS}, INITIAL_TEMPERATURE)
    np.testing.assert_allclose(out["loss"], total, rtol=1e-5)
    _close_dt(dt, ref_dt, fp32_dt_error_bound(rounded, {k: 1.0 for k in LC.TERMS}, INITIAL_TEMPERATURE))
    for v in VIEWS:  # gradients come back in the input dtype, so only to its precision
        np.testing.assert_allclose(grads[v], ref_grads[v], rtol=2e-2, atol=2e-3)


# ----------------------------------------------------------------------------------------------
# temperature clamp
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt_name,push", [("sgd", "up"), ("sgd", "down"), ("adamw", "up"), ("adamw", "down")])
def test_clamp_holds_after_an_out_of_range_step(opt_name, push):
    t = _temperature()
    opt = (paddle.optimizer.SGD(learning_rate=1.0, parameters=[t]) if opt_name == "sgd"
           else paddle.optimizer.AdamW(learning_rate=10.0, parameters=[t], weight_decay=0.0))
    sign = -1.0 if push == "up" else 1.0  # minimising sign * 1e6 * t pushes t the other way
    (t * (sign * 1e6)).sum().backward()
    opt.step()
    before = float(t.numpy()[0])
    assert (before > math.log(100.0)) if push == "up" else (before < 0.0)  # the step did overshoot
    L.clamp_logit_scale_(t)
    scale = math.exp(float(t.numpy()[0]))
    assert 1.0 - 1e-6 <= scale <= 100.0 + 1e-4
    assert scale == pytest.approx(100.0 if push == "up" else 1.0, rel=1e-6)
    assert not t.stop_gradient  # still a trainable parameter


def test_clamp_also_clips_the_optimizers_master_copy():
    # AMP O2 keeps an fp32 master weight per parameter name; CPU has no fp16 AdamW kernel, so stand in.
    t = _temperature(9.0)
    master = paddle.to_tensor([9.0])

    class FakeOptimizer:
        _master_weights = {t.name: master}

    L.clamp_logit_scale_(t, optimizer=FakeOptimizer())
    assert float(master.numpy()[0]) == pytest.approx(math.log(100.0), rel=1e-6)
    assert float(t.numpy()[0]) == pytest.approx(math.log(100.0), rel=1e-6)


def test_clamp_leaves_in_range_value_alone_and_scale_is_used():
    t = _temperature(3.0)
    L.clamp_logit_scale_(t)
    assert float(t.numpy()[0]) == pytest.approx(3.0)
    L.clamp_logit_scale_(t, max_scale=10.0)
    assert float(t.numpy()[0]) == pytest.approx(math.log(10.0), rel=1e-6)


# ----------------------------------------------------------------------------------------------
# momentum queue and momentum encoders
# ----------------------------------------------------------------------------------------------
def test_queue_enqueue_order_wraparound_and_filled():
    rng = np.random.default_rng(8)
    q = L.MomentumQueue(size=6, dim=3)
    assert q.negatives() is None
    batches = [(rng.standard_normal((2, 3)), rng.standard_normal((2, 3))) for _ in range(4)]
    expected_img, expected_txt = np.zeros((6, 3)), np.zeros((6, 3))
    for i, (bi, bt) in enumerate(batches):
        q.enqueue(paddle.to_tensor(bi.astype(np.float32)), paddle.to_tensor(bt.astype(np.float32)))
        rows = slice((2 * i) % 6, (2 * i) % 6 + 2)
        expected_img[rows], expected_txt[rows] = _unit(bi), _unit(bt)
        assert int(q.ptr.item()) == (2 * (i + 1)) % 6
        assert int(q.filled.item()) == min(2 * (i + 1), 6)
        np.testing.assert_allclose(q.image_queue.numpy(), expected_img, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(q.text_queue.numpy(), expected_txt, rtol=1e-6, atol=1e-7)
        neg_img, neg_txt = q.negatives()
        assert neg_img.shape[0] == min(2 * (i + 1), 6) and neg_txt.shape[0] == neg_img.shape[0]
    # the 4th batch overwrote the oldest one (rows 0-1) and kept batches 2 and 3
    np.testing.assert_allclose(q.image_queue.numpy()[:2], _unit(batches[3][0]), rtol=1e-6)
    np.testing.assert_allclose(q.image_queue.numpy()[2:4], _unit(batches[1][0]), rtol=1e-6)


def test_queue_size_must_be_multiple_of_global_batch():
    with pytest.raises(ValueError, match=r"loss.queue.size \(10\).*global batch.*4"):
        L.MomentumQueue(size=10, dim=3, global_batch=4)
    q = L.MomentumQueue(size=10, dim=3)
    with pytest.raises(ValueError, match=r"loss.queue.size \(10\).*3"):
        q.enqueue(paddle.ones([3, 3]), paddle.ones([3, 3]))
    with pytest.raises(ValueError, match=r"must be \[n, 3\]"):
        q.enqueue(paddle.ones([2, 4]), paddle.ones([2, 4]))
    with pytest.raises(ValueError, match="loss.queue.size"):
        L.MultiViewContrastiveLoss({"queue": {"enabled": True, "size": 12}}, embed_dim=3, global_batch=8)


def test_unfilled_queue_rows_are_not_negatives():
    rng = np.random.default_rng(9)
    x = _views(rng)
    loss_fn = L.MultiViewContrastiveLoss({"queue": {"enabled": True, "size": 12}}, embed_dim=4)
    ki, kt = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    loss_fn.update_queue(paddle.to_tensor(ki.astype(np.float32)), paddle.to_tensor(kt.astype(np.float32)))
    t = 0.5  # a small scale, so that zero rows (logit 0) would weigh as much as real negatives
    out, grads, dt, _ = _run(loss_fn, x, t_value=t)
    w = {k: 1.0 for k in LC.TERMS}
    filled = (_unit(ki), _unit(kt))
    terms, total, ref_grads, ref_dt = ref_multiview(x, w, t, queue=filled)
    _close(out["loss"], total)
    for v in VIEWS:
        _close(grads[v], ref_grads[v])
    _close_dt(dt, ref_dt, fp32_dt_error_bound(x, w, t, queue=filled))
    # had the 6 zero rows been negatives, the loss would differ (each adds exp(0) to a denominator)
    padded = tuple(np.vstack([f, np.zeros((6, 4))]) for f in filled)
    assert abs(ref_multiview(x, w, t, queue=padded)[1] - total) > 0.1
    # and an empty queue is exactly the in-batch loss
    empty = L.MultiViewContrastiveLoss({"queue": {"enabled": True, "size": 12}}, embed_dim=4)
    _close(_run(empty, x)[0]["loss"], ref_multiview(x, w, INITIAL_TEMPERATURE)[1])


def test_queue_state_round_trips_through_state_dict(tmp_path):
    rng = np.random.default_rng(10)
    cfg = {"queue": {"enabled": True, "size": 8}}
    a = L.MultiViewContrastiveLoss(cfg, embed_dim=4)
    for _ in range(3):  # wraps: ptr back at 4, queue full
        a.update_queue(paddle.to_tensor(rng.standard_normal((4, 4)).astype(np.float32)),
                       paddle.to_tensor(rng.standard_normal((4, 4)).astype(np.float32)))
    path = str(tmp_path / "loss.pdparams")
    paddle.save(a.state_dict(), path)
    b = L.MultiViewContrastiveLoss(cfg, embed_dim=4)
    b.set_state_dict(paddle.load(path))
    for k in ("image_queue", "text_queue", "ptr", "filled"):
        np.testing.assert_array_equal(getattr(b.queue, k).numpy(), getattr(a.queue, k).numpy())
    assert int(b.queue.ptr.item()) == 4 and int(b.queue.filled.item()) == 8
    x = _views(rng)
    assert _run(a, x)[0]["loss"] == _run(b, x)[0]["loss"]


def test_momentum_copy_and_update():
    paddle.seed(11)
    online = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.LayerNorm(4))
    mom = L.make_momentum_copy(online)
    assert all(p.stop_gradient for p in mom.parameters())
    assert all(not p.stop_gradient for p in online.parameters())
    before = {n: p.numpy().copy() for n, p in mom.named_parameters()}
    for n, p in online.named_parameters():
        np.testing.assert_array_equal(before[n], p.numpy())
        p.set_value(p + 1.0)  # the copy must be independent of the online layer
    np.testing.assert_array_equal(mom[0].weight.numpy(), before["0.weight"])
    L.momentum_update_(online, mom, 0.9)
    for n, p in online.named_parameters():
        np.testing.assert_allclose(dict(mom.named_parameters())[n].numpy(),
                                   0.9 * before[n] + 0.1 * p.numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="parameter names differ"):
        L.momentum_update_(online, paddle.nn.Linear(3, 4), 0.9)


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------
def test_config_defaults_and_round_trip():
    cfg = LC.LossConfig.from_dict(None)
    assert cfg.cross_modal_image_view == 2 and cfg.cross_modal_text_view == 1 and cfg.negatives == "full"
    assert cfg.weights.image_tags == 1.0 and cfg.queue.enabled is False and cfg.max_logit_scale == 100.0
    d = cfg.to_dict()
    assert LC.LossConfig.from_dict(d) == cfg
    assert tag_text(["红色汽车", "蓝天", "绿树"]) == "图片中包含红色汽车, 蓝天, 绿树"


@pytest.mark.parametrize("d,msg", [
    ({"weights": {"imgae_image": 1.0}}, r"unknown key 'loss\.weights\.imgae_image' \(did you mean "),
    ({"wieghts": {}}, r"unknown key 'loss\.wieghts'"),
    ({"queue": {"sise": 4}}, r"unknown key 'loss\.queue\.sise'"),
    ({"weights": {"text_text": -1}}, r"'loss\.weights\.text_text' must be >= 0\.0, got -1"),
    ({"weights": {"text_text": float("nan")}}, r"'loss\.weights\.text_text' must be >= 0\.0, got nan"),
    ({"weights": {"text_text": "1"}}, r"'loss\.weights\.text_text' must be float"),
    ({"cross_modal_image_view": 3}, r"'loss\.cross_modal_image_view' must be one of 1, 2"),
    ({"negatives": "global"}, r"'loss\.negatives' must be one of full, local"),
    ({"queue": {"enabled": "yes"}}, r"'loss\.queue\.enabled' must be bool"),
    ({"queue": {"size": 0}}, r"'loss\.queue\.size' must be >= 1"),
    ({"queue": {"momentum": 1.0}}, r"'loss\.queue\.momentum' must be in \[0\.0, 1\.0\)"),
    ({"queue": {"terms": ["text_text"]}}, r"'loss\.queue\.terms' may hold only image_caption, image_tags"),
    ({"weights": {t: 0 for t in LC.TERMS}}, r"'loss\.weights' every term weight is 0"),
    ({"weights": {"image_caption": 0, "image_tags": 0}, "queue": {"enabled": True}}, r"'loss\.queue\.enabled'"),
])
def test_config_errors_name_the_key(d, msg):
    with pytest.raises(ConfigError, match=msg):
        LC.LossConfig.from_dict(d)


def test_queue_requires_embed_dim():
    with pytest.raises(ValueError, match="embed_dim"):
        L.MultiViewContrastiveLoss({"queue": {"enabled": True}})


def test_helpers_are_identity_in_one_process():
    from ernievil2.train import distributed as edist
    x = paddle.to_tensor([[1.0, 2.0]], stop_gradient=False)
    assert edist.get_world_size() == 1 and edist.get_rank() == 0 and not edist.is_distributed()
    assert edist.all_gather_with_grad(x) is x
    np.testing.assert_array_equal(edist.all_gather_no_grad(x).numpy(), x.numpy())
    np.testing.assert_array_equal(edist.all_reduce_mean_no_grad(x).numpy(), x.numpy())


# ----------------------------------------------------------------------------------------------
# 2 processes x B == 1 process x 2B
# ----------------------------------------------------------------------------------------------
def _load_check_module():
    spec = importlib.util.spec_from_file_location("dist_loss_check", os.path.join(HERE, "dist_loss_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    if importlib.util.find_spec("paddle.distributed.launch") is None:
        pytest.skip("paddle.distributed.launch is not available in this Paddle build")
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--max_restart", "0",
           "--log_dir", str(out / "log"), os.path.join(HERE, "dist_loss_check.py"), "--out", str(out / "res")]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    if proc.returncode != 0:
        logs = ""
        for name in sorted(os.listdir(out / "log")) if (out / "log").exists() else []:
            with open(out / "log" / name, errors="replace") as f:
                logs += f"\n--- {name}\n" + f.read()[-3000:]
        pytest.fail(f"distributed run failed ({proc.returncode}):\n{proc.stdout.decode()[-2000:]}{logs}")
    return out / "res"


@pytest.mark.parametrize("case", ["full", "local", "full_queue", "local_queue", "full_masked",
                                  "local_queue_masked"])
def test_two_ranks_match_one_process(two_rank_results, case):
    mod = _load_check_module()
    single = mod.run_case(**mod.CASES[case])
    multi = dict(np.load(two_rank_results / f"{case}.npz"))
    losses = multi.pop("loss_all_ranks")  # [steps, ranks, 1 + terms]
    # Every rank reports the global loss, equal to the single-process one, at every step.  The runs are float64
    # (eps 2.2e-16) on O(1) values with sums over <= 48 terms and 4 SGD steps of lr 0.5: rounding differences
    # between the split and the whole batch stay below ~1e-13, whatever order a CPU's kernels sum in; 1e-10 is
    # far above that and far below any real difference (a missing negative or gradient term moves values >1e-3).
    np.testing.assert_allclose(losses[:, 0], losses[:, 1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(losses[:, 0], single.pop("loss_all_ranks")[:, 0], rtol=0, atol=1e-10)
    assert set(multi) == set(single)
    for k in sorted(single):
        np.testing.assert_allclose(multi[k], single[k], rtol=0, atol=1e-10, err_msg=k)
    # the checks are not vacuous: gradients are non-trivial and (queue cases) the queue filled and wrapped
    assert np.abs(single["emb_grads"]).max() > 1e-3 and np.abs(single["temperature_grad"]).max() > 1e-3
    if "queue" in case:
        assert int(single["queue_filled"][0]) == 16 and int(single["queue_ptr"][0]) == 0
        assert np.abs(single["queue_image_queue"]).max() > 0.1


def test_two_rank_helpers(two_rank_results):
    rows = np.load(two_rank_results / "helpers.npz")["rows"]  # one row per rank
    # weight (6) and bias (3) are rank 1's value 2.0, buffer (2) rank 1's 8.0, x (3) rank 0's 0.0,
    # the mean of (1, 2) is 1.5, then rank and world size
    for r in range(2):
        np.testing.assert_array_equal(rows[r], [2.0] * 9 + [8.0] * 2 + [0.0] * 3 + [1.5] * 2 + [r, 2])


# ----------------------------------------------------------------------------------------------
# duplicate-aware negatives (loss.mask_duplicates)
# ----------------------------------------------------------------------------------------------
def brute_force_masked_pair(a, b, t, excluded, a_neg=None, b_neg=None, excluded_neg=None):
    """Symmetric InfoNCE by explicit sums over the allowed columns (float64): for query i, the softmax runs
    over its positive and the columns j with excluded[i, j] False (and queue columns not excluded)."""
    A, B = _unit(np.asarray(a, np.float64)), _unit(np.asarray(b, np.float64))
    s, n, total = math.exp(t), len(A), 0.0
    for Q, K, neg in ((A, B, b_neg), (B, A, a_neg)):
        for i in range(n):
            logits = [s * Q[i] @ K[j] for j in range(n) if j == i or not excluded[i, j]]
            if neg is not None:
                logits += [s * Q[i] @ np.asarray(neg[j], np.float64) for j in range(len(neg))
                           if not excluded_neg[i, j]]
            positive = s * Q[i] @ K[i]
            total += 0.5 * (np.log(np.sum(np.exp(np.array(logits) - positive))))  # -log softmax of the positive
    return total / n


@pytest.mark.parametrize("mode", ["none", "image", "caption", "both"])
def test_duplicates_leave_the_cross_modal_negatives_as_a_brute_force_reference_says(mode):
    rng = np.random.default_rng(21)
    x = _views(rng, n=6, d=4)
    image = np.array([5, 1, 5, 2, 3, 1])       # rows 0 and 2, 1 and 5: one image each
    caption = np.array([7, 8, 9, 8, 6, 4])     # rows 1 and 3 say the same
    tags = np.array([30, 31, 32, 33, 30, 35])  # rows 0 and 4: the same tag text
    ids = {"image": paddle.to_tensor(image), "caption": paddle.to_tensor(caption), "tags": paddle.to_tensor(tags)}
    loss_fn = L.MultiViewContrastiveLoss({"mask_duplicates": mode})
    t = 1.1
    ts = {v: paddle.to_tensor(x[v]) for v in x}
    out = loss_fn(**ts, temperature=_temperature(t), identities=ids)
    same_image = (image[:, None] == image[None, :]) & (mode in ("image", "both"))
    for term, text in (("image_caption", caption), ("image_tags", tags)):
        excluded = same_image | ((text[:, None] == text[None, :]) & (mode in ("caption", "both")))
        np.fill_diagonal(excluded, False)
        a, b = ("image_view2", "text_view1") if term == "image_caption" else ("image_view2", "tags")
        expected = brute_force_masked_pair(x[a], x[b], t, excluded)
        assert float(out[term]) == pytest.approx(expected, rel=1e-5, abs=1e-6), (term, mode)
        if mode == "none":
            assert expected == pytest.approx(ref_pair(x[a], x[b], t)[0], rel=1e-9)
    unmasked = L.MultiViewContrastiveLoss({"mask_duplicates": "none"})(**ts, temperature=_temperature(t))
    if mode != "none":  # not vacuous: the masks change the value
        assert abs(float(out["image_caption"]) - float(unmasked["image_caption"])) > 1e-3


def test_queued_rows_of_the_same_image_or_caption_are_no_negatives():
    rng = np.random.default_rng(22)
    x = _views(rng, n=4, d=4)
    loss_fn = L.MultiViewContrastiveLoss({"mask_duplicates": "both", "queue": {"enabled": True, "size": 8}},
                                         embed_dim=4)
    qi, qt = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    queued = {"image": paddle.to_tensor(np.array([1, 50, 51, 52])),
              "caption": paddle.to_tensor(np.array([60, 61, 12, 63])), "tags": paddle.to_tensor(np.zeros(4, int))}
    loss_fn.update_queue(paddle.to_tensor(qi.astype(np.float32)), paddle.to_tensor(qt.astype(np.float32)), queued)
    image, caption = np.array([1, 2, 3, 4]), np.array([10, 11, 12, 13])
    ids = {"image": paddle.to_tensor(image), "caption": paddle.to_tensor(caption),
           "tags": paddle.to_tensor(np.array([20, 21, 22, 23]))}
    t = 0.8
    out = loss_fn(**{v: paddle.to_tensor(x[v]) for v in x}, temperature=_temperature(t), identities=ids)
    # queue row 0 shows row 0's image, queue row 2 carries row 2's caption
    excluded_neg = (image[:, None] == np.array([1, 50, 51, 52])[None, :]) | \
                   (caption[:, None] == np.array([60, 61, 12, 63])[None, :])
    assert excluded_neg.sum() == 2
    expected = brute_force_masked_pair(x["image_view2"], x["text_view1"], t, np.zeros((4, 4), bool),
                                       a_neg=_unit(qi), b_neg=_unit(qt), excluded_neg=excluded_neg)
    assert float(out["image_caption"]) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_barrier_outlasts_gloo_timeout_while_one_rank_works_alone(tmp_path):
    """gloo's collectives on the CPU give up after 30 s; edist.barrier counts ranks in the launcher's TCP store
    instead, so rank 0 may work alone for longer (checkpoint, evaluation, demo data) while the others wait."""
    if importlib.util.find_spec("paddle.distributed.launch") is None:
        pytest.skip("paddle.distributed.launch is not available in this Paddle build")
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--max_restart", "0",
           "--log_dir", str(tmp_path / "log"), os.path.join(HERE, "barrier_check.py"), str(tmp_path), "33"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
    assert proc.returncode == 0, proc.stdout.decode()[-3000:]
    for rank in (0, 1):
        assert (tmp_path / f"rank{rank}.txt").read_text().strip() == "3.0"  # both passed and then reduced 1 + 2
