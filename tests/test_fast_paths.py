"""The fast formulations chosen with ``python -m glean_jax.benchmark`` are still the ones in use, and exact.

Not timed. The jaxprs are traced on abstract shapes (nothing is computed for them):

* StyleGAN2 modulated convs: input-scale form (no grouped conv, ``feature_group_count == 1``) and the up-conv by
  phase decomposition (no lhs-dilated / transposed conv in the forward). In the gradient, the only lhs-dilated convs
  are the input gradients of the forward's stride-2 convs: the weight gradient of a transposed conv (pathologically
  slow in XLA:CPU) never appears.
* Exactness against mmagic's grouped per-sample-weight formulation (forward and up-conv).
* The RRDB trunk is one ``lax.scan`` over the blocks' stacked parameters (compile time), equal to the unrolled loop.

(A concatenation-free RRDB dense block was measured and not adopted: benchmarks/README.md.)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from glean_jax.benchmark import iter_eqns
from glean_jax.models import ops
from glean_jax.models.build import variable_shapes
from glean_jax.models.glean import GLEAN
from glean_jax.models.layers import Conv
from glean_jax.models.rrdb import RRDB, RRDBFeatureExtractor


def _convs(jaxpr) -> list:
    return [e for e in iter_eqns(jaxpr) if e.primitive.name == "conv_general_dilated"]


def _prims(jaxpr) -> set[str]:
    return {e.primitive.name for e in iter_eqns(jaxpr)}


@functools.lru_cache(maxsize=1)
def _glean_jaxprs(in_size: int = 8, out_size: int = 32):
    g = GLEAN(in_size, out_size, rrdb_channels=8, num_rrdbs=1)
    shapes = variable_shapes("glean", g)
    lq = jax.ShapeDtypeStruct((2, in_size, in_size, 3), jnp.float32)
    fwd = jax.make_jaxpr(g.apply)(shapes, lq)

    def loss(params, buffers, x):
        return jnp.sum(g.apply({"params": params, "buffers": buffers}, x) ** 2)

    grad = jax.make_jaxpr(jax.grad(loss, argnums=(0, 2)))(shapes["params"], shapes["buffers"], lq)
    return fwd, grad


def test_glean_forward_has_no_grouped_or_transposed_conv():
    fwd, _ = _glean_jaxprs()
    convs = _convs(fwd)
    assert len(convs) > 20
    for e in convs:
        assert e.params["feature_group_count"] == 1, "grouped conv in the GLEAN forward (slow in XLA)"
        assert e.params["batch_group_count"] == 1
        assert all(d == 1 for d in e.params["lhs_dilation"]), "transposed (lhs-dilated) conv in the GLEAN forward"


def test_glean_gradient_convs_are_all_plain_forward_convs():
    """No conv in GLEAN's gradient is one XLA:CPU runs through its slow generic emitter: no lhs-dilated conv (the
    input gradient of a stride-2 or transposed conv), no image-sized window (a native weight gradient), no grouped
    conv -- the custom VJP of ``ops.conv`` computes them as plain convs and matrix products."""
    fwd, grad = _glean_jaxprs()
    strided = sum(1 for e in _convs(fwd) if any(s > 1 for s in e.params["window_strides"]))
    assert strided >= 1                           # the encoder's stride-2 conv
    grad_convs = _convs(grad)
    assert len(grad_convs) > len(_convs(fwd))     # the backward's input-gradient convs are there
    for e in grad_convs:
        assert e.params["feature_group_count"] == 1 and e.params["batch_group_count"] == 1
        assert all(d == 1 for d in e.params["lhs_dilation"]) and all(d == 1 for d in e.params["rhs_dilation"])
        assert max(e.invars[1].aval.shape[:2]) <= 3, e.invars[1].aval.shape   # kernel-sized windows only
    assert sum(e.primitive.name == "dot_general" for e in iter_eqns(grad)) >= 9 * len(_convs(fwd)) // 2


def test_conv_vjp_equals_autodiff_of_lax_conv():
    """``ops.conv``'s hand-written backward (phase-decomposed input gradient, tap-wise matmul weight gradient)
    against JAX's autodiff of ``lax.conv_general_dilated``: strides 1-3, kernels 1-5, paddings, odd sizes."""
    rng = np.random.default_rng(0)
    cases = [(7, 5, 3, 4, 3, 1, 1), (7, 5, 6, 4, 3, 1, 1), (6, 6, 4, 2, 1, 0, 1), (8, 9, 5, 3, 4, 2, 1),
             (8, 8, 3, 4, 3, 1, 2), (9, 7, 3, 4, 3, 1, 2), (11, 9, 4, 3, 3, 0, 2), (8, 8, 3, 5, 1, 0, 2),
             (12, 11, 2, 3, 4, 1, 2), (13, 11, 2, 3, 5, 2, 3), (6, 6, 2, 3, 1, 0, 3)]
    for h, w_, ci, co, k, p, st in cases:
        x = jnp.asarray(rng.standard_normal((2, h, w_, ci)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, ci, co)), jnp.float32)
        def ours_f(x, w, st=st, p=p):
            return jnp.sum(jnp.sin(ops.conv2d(x, w, st, p)))

        def ref_f(x, w, st=st, p=p):
            return jnp.sum(jnp.sin(lax.conv_general_dilated(x, w, (st, st), ((p, p), (p, p)),
                                                            dimension_numbers=ops.DIMENSION_NUMBERS)))

        ours, ref = jax.grad(ours_f, (0, 1))(x, w), jax.grad(ref_f, (0, 1))(x, w)
        for a, b in zip(ours, ref, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-5, err_msg=str((h, k, p, st)))


def _grouped_modconv(x, w, s, upsample):
    """mmagic's form: per-sample weights W * s * d as one grouped conv (transposed + blur when upsampling)."""
    n, cin, cout = x.shape[0], w.shape[2], w.shape[3]
    wn = w[None] * s[:, None, None, :, None]                                     # (N, k, k, I, O)
    d = lax.rsqrt(jnp.sum(wn * wn, axis=(1, 2, 3)) + 1e-8)                      # (N, O)
    wn = wn * d[:, None, None, None, :]
    xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, x.shape[1], x.shape[2], n * cin)
    if upsample:
        # transposed conv, stride 2, pad 0: lhs-dilated conv with the spatially flipped kernel, full padding
        wg = jnp.transpose(wn[:, ::-1, ::-1], (1, 2, 3, 0, 4)).reshape(3, 3, cin, n * cout)
        y = lax.conv_general_dilated(xg, wg, (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                     dimension_numbers=ops.DIMENSION_NUMBERS, feature_group_count=n)
    else:
        wg = jnp.transpose(wn, (1, 2, 3, 0, 4)).reshape(3, 3, cin, n * cout)
        y = lax.conv_general_dilated(xg, wg, (1, 1), ((1, 1), (1, 1)), dimension_numbers=ops.DIMENSION_NUMBERS,
                                     feature_group_count=n)
    y = jnp.transpose(y.reshape(1, y.shape[1], y.shape[2], n, cout), (3, 1, 2, 4, 0))[..., 0]
    if upsample:
        y = ops.upfirdn2d(y, ops.fir_taps(gain=4.0), pad=(1, 1))
    return y


def test_modulated_conv_fast_form_is_exact_and_ungrouped():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 6, 5, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 8, 4)) / np.sqrt(72), jnp.float32)
    s = jnp.asarray(rng.uniform(0.5, 1.5, (3, 8)), jnp.float32)
    for upsample in (False, True):
        f = lambda x, w, s, u=upsample: ops.modulated_conv(x, w, s, upsample=u)  # noqa: E731
        out = f(x, w, s)
        ref = _grouped_modconv(x, w, s, upsample)
        assert out.shape == ref.shape == ((3, 12, 10, 4) if upsample else (3, 6, 5, 4))
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=2e-5)
        for jaxpr in (jax.make_jaxpr(f)(x, w, s),
                      jax.make_jaxpr(jax.grad(lambda *a, f=f: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2)))(x, w, s)):
            for e in _convs(jaxpr):
                assert e.params["feature_group_count"] == 1
                assert all(d == 1 for d in e.params["lhs_dilation"])


def test_rrdb_trunk_is_one_scan_and_equals_the_unrolled_blocks():
    """The 23 RRDBs run as one ``lax.scan`` (compiled once, not 23 times), and are initialised by one vmapped
    init; same values as block after block, distinct random weights per block."""
    m = RRDBFeatureExtractor(8, 3, 8)
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3), jnp.float32)
    v = m.init(jax.random.key(0), x)
    assert sorted(v["params"]) == ["body_0", "body_1", "body_2", "conv_body", "conv_first"]
    k = [np.asarray(v["params"][f"body_{i}"]["rdb1"]["conv1"]["weight"]) for i in range(3)]
    assert k[0].shape == (3, 3, 8, 8) and not np.array_equal(k[0], k[1]) and not np.array_equal(k[1], k[2])

    def random_ops(n: int) -> int:
        init = jax.make_jaxpr(lambda r: RRDBFeatureExtractor(8, n, 8).init(r, x))(jax.random.key(0))
        return sum(e.primitive.name in ("random_bits", "threefry2x32") for e in iter_eqns(init))

    assert random_ops(2) == random_ops(5) > 0  # one vmapped block init, whatever the number of blocks
    jaxpr = jax.make_jaxpr(m.apply)(v, x)
    scans = [e for e in iter_eqns(jaxpr) if e.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 3

    def unrolled(p, x):
        conv = lambda name, h: Conv(8).apply({"params": p[name]}, h)  # noqa: E731
        feat = conv("conv_first", x)
        body = feat
        for i in range(3):
            body = RRDB(8, 8).apply({"params": p[f"body_{i}"]}, body)
        return feat + conv("conv_body", body)

    out = m.apply(v, x)
    ref = unrolled(v["params"], x)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=0, atol=1e-5)
    g = jax.grad(lambda p: jnp.sum(jnp.sin(m.apply({"params": p}, x))))(v["params"])
    g_ref = jax.grad(lambda p: jnp.sum(jnp.sin(unrolled(p, x))))(v["params"])
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref), strict=True):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * (float(jnp.max(jnp.abs(b))) + 1e-6)
