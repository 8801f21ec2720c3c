"""The fast formulations chosen with ``python -m glean_jax.benchmark`` are still the ones in use, and exact.

Not timed. The jaxprs are traced on abstract shapes (nothing is computed for them):

* StyleGAN2 modulated convs: input-scale form (no grouped conv, ``feature_group_count == 1``) and the up-conv by
  phase decomposition (no lhs-dilated / transposed conv in the forward).
* ``conv.conv``'s hand-written backward: every conv of the gradient is a canonical-layout forward conv (no lhs- or
  kernel-dilated, grouped or transposed-layout conv, which XLA:CPU runs through its slow generic emitter); the weight
  gradient keeps no per-tap copies of the input (XLA's memory accounting); exact against autodiff. A conv with few
  output channels runs as matrix products on CPU, forward and backward.
* Exactness against mmagic's grouped per-sample-weight formulation (forward and up-conv).
* The RRDB trunk is one ``lax.scan`` over the blocks' stacked parameters (compile time), equal to the unrolled loop.
* The perceptual loss's VGG16 convs go through ``conv.conv``: its gradient's first-conv input gradient (3 -> 64 ch) is
  matrix products on CPU, and the frozen VGG's weight gradients are not computed. Its 2x2 max pool keeps an int8
  index for the backward (no reduce-window argmax over int32 index maps) and the FIR blur's backward is its adjoint
  filter; both exact against autodiff.

(A concatenation-free RRDB dense block was measured and not adopted: benchmarks/README.md.)
"""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from glean_jax import losses
from glean_jax.arch import GleanArch
from glean_jax.flops import iter_eqns
from glean_jax.models import conv as conv_lib
from glean_jax.models import ops
from glean_jax.models.build import variable_shapes
from glean_jax.models.fir import _fir, fir_filter
from glean_jax.models.glean import GLEAN
from glean_jax.models.layers import Conv
from glean_jax.models.rrdb import RRDB, RRDBFeatureExtractor
from glean_jax.models.vgg import VGG16_LAYERS, conv_name, init_vgg16_params, max_pool_2x2, required_convs


def _convs(jaxpr) -> list:
    return [e for e in iter_eqns(jaxpr) if e.primitive.name == "conv_general_dilated"]


def _prims(jaxpr) -> set[str]:
    return {e.primitive.name for e in iter_eqns(jaxpr)}


@functools.lru_cache(maxsize=1)
def _glean_jaxprs(in_size: int = 8, out_size: int = 32):
    g = GLEAN(GleanArch(in_size, out_size, rrdb_channels=8, num_rrdbs=1))
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


CANONICAL = "[b,0,1,f]x[0,1,i,o]->[b,0,1,f]"


def _hlo_convs(text: str) -> list[dict]:
    """The convolutions of a lowered StableHLO module: layout, window, attributes, kernel shape."""
    convs = []
    for line in text.splitlines():
        if "stablehlo.convolution" not in line:
            continue
        dims = re.search(r"dim_numbers = (\[[^\]]*\]x\[[^\]]*\]->\[[^\]]*\])", line)
        window = re.search(r"window = \{([^}]*)\}", line)
        attrs = re.search(r"\{([^}]*group_count[^}]*)\}", line)
        types = re.search(r": \(tensor<([^>]*)>, tensor<([^>]*)>\)", line)
        assert dims and attrs and types, line
        convs.append({"dims": dims[1].replace(" ", ""), "window": window[1].replace(" ", "") if window else "",
                      "attrs": attrs[1].replace(" ", ""), "kernel": [int(d) for d in types[2].split("x")[:-1]]})
    return convs


@functools.lru_cache(maxsize=1)
def _glean_grad_lowered() -> tuple[str, str]:
    """GLEAN's gradient lowered (not compiled) for CPU and exported for CUDA: (cpu text, cuda text)."""
    g = GLEAN(GleanArch(8, 32, rrdb_channels=8, num_rrdbs=1))
    shapes = variable_shapes("glean", g)
    lq = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)

    def loss(params, buffers, x):
        return jnp.sum(g.apply({"params": params, "buffers": buffers}, x) ** 2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 2)))
    args = (shapes["params"], shapes["buffers"], lq)
    cpu = grad.trace(*args).lower(lowering_platforms=("cpu",)).as_text()
    cuda = jax.export.export(grad, platforms=["cuda"])(*args).mlir_module()
    return cpu, cuda


def test_glean_gradient_convs_on_cpu_are_all_canonical_forward_convs():
    """No conv in GLEAN's gradient lowered for CPU is one XLA:CPU runs through its slow generic emitter: every conv
    is in the canonical NHWC/HWIO layout, with no lhs-dilated conv (the input gradient of a stride-2 or transposed
    conv), no dilated kernel and no grouped conv. The weight gradients are there as such convs (an image-sized
    kernel over the transposed input), not as autodiff's transposed-layout conv or per-tap copies of the input."""
    cpu, _ = _glean_grad_lowered()
    fwd_convs = _convs(_glean_jaxprs()[0])
    assert any(any(s > 1 for s in e.params["window_strides"]) for e in fwd_convs)   # the encoder's stride-2 conv
    convs = _hlo_convs(cpu)
    for c in convs:
        assert c["dims"] == CANONICAL, c
        assert "lhs_dilate" not in c["window"] or "lhs_dilate=[1,1]" in c["window"], c
        assert "rhs_dilate" not in c["window"] or "rhs_dilate=[1,1]" in c["window"], c
        assert "feature_group_count=1:" in c["attrs"] and "batch_group_count=1:" in c["attrs"], c
    weight_grads = [c for c in convs if max(c["kernel"][:2]) > 5]           # image-sized kernels
    assert len(weight_grads) >= len(fwd_convs) // 2, (len(weight_grads), len(fwd_convs))
    assert len(convs) - len(weight_grads) >= len(fwd_convs)                  # forward convs + input gradients


def test_glean_gradient_on_gpu_keeps_the_native_conv_backward():
    """Lowered for CUDA, the backward is autodiff's (XLA:GPU maps its transposed-layout convs onto cuDNN's
    backward-data / backward-filter kernels): the CPU formulation's image-sized kernels do not appear."""
    _, cuda = _glean_grad_lowered()
    convs = _hlo_convs(cuda)
    assert any(c["dims"] != CANONICAL for c in convs)                         # autodiff's weight gradients
    assert not [c for c in convs if c["dims"] == CANONICAL and max(c["kernel"][:2]) > 5]


def test_conv_weight_gradient_needs_no_copy_per_tap():
    """XLA's own accounting of a 3x3 conv's forward+backward: the temporaries stay within 4x the input's size
    (the k*k shifted copies of a tap-wise weight gradient took ~12x; autodiff's transposed conv ~3x)."""
    from glean_jax import runtime

    x = jax.ShapeDtypeStruct((1, 64, 64, 32), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 32, 32), jnp.float32)
    grad = jax.grad(lambda x, w: jnp.sum(ops.conv2d(x, w, 1, 1) ** 2), argnums=(0, 1))
    temp = runtime.jit(grad).lower(x, w).compile().memory_analysis().temp_size_in_bytes
    assert temp <= 4 * 64 * 64 * 32 * 4, temp


def test_conv_vjp_equals_autodiff_of_lax_conv():
    """``conv.conv``'s hand-written backward (phase-decomposed input gradient, weight gradient as canonical-layout
    convs, one per input phase) against JAX's autodiff of ``lax.conv_general_dilated``: strides 1-3, kernels 1-5,
    paddings, odd sizes. The GPU/TPU branch (autodiff's transposed convs) likewise."""
    rng = np.random.default_rng(0)
    cases = [(7, 5, 3, 4, 3, 1, 1), (7, 5, 6, 4, 3, 1, 1), (6, 6, 4, 2, 1, 0, 1), (8, 9, 5, 3, 4, 2, 1),
             (8, 8, 3, 4, 3, 1, 2), (9, 7, 3, 4, 3, 1, 2), (11, 9, 4, 3, 3, 0, 2), (8, 8, 3, 5, 1, 0, 2),
             (12, 11, 2, 3, 4, 1, 2), (13, 11, 2, 3, 5, 2, 3), (6, 6, 2, 3, 1, 0, 3),
             (10, 9, 1, 8, 4, 1, 2)]   # the last: its input gradient's 2x2 phase convs (8 -> 1 ch) are narrow
    for h, w_, ci, co, k, p, st in cases:
        x = jnp.asarray(rng.standard_normal((2, h, w_, ci)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, ci, co)), jnp.float32)
        def ours_f(x, w, st=st, p=p):
            return jnp.sum(jnp.sin(ops.conv2d(x, w, st, p)))

        def ref_f(x, w, st=st, p=p):
            return jnp.sum(jnp.sin(lax.conv_general_dilated(x, w, (st, st), ((p, p), (p, p)),
                                                            dimension_numbers=conv_lib.DIMENSION_NUMBERS)))

        ours, ref = jax.grad(ours_f, (0, 1))(x, w), jax.grad(ref_f, (0, 1))(x, w)
        # the other backends' branch, run here directly, for the same output gradient
        y = ops.conv2d(x, w, st, p)
        native = conv_lib.conv_backward_native(x, w, jnp.cos(y), stride=st, pad_h=p, pad_w=p)
        for a, b, c in zip(ours, ref, native, strict=True):
            assert a.shape == b.shape == c.shape
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-5, err_msg=str((h, k, p, st)))
            np.testing.assert_allclose(np.asarray(c), np.asarray(b), rtol=0, atol=2e-5, err_msg=str((h, k, p, st)))


def test_conv_gradient_under_vmap_on_a_sharded_mesh():
    """A vmapped conv's weight gradient with the batch sharded over 4 x 2 simulated devices equals the unsharded
    autodiff one. (The canonical-layout weight-gradient conv batches into a grouped conv that XLA:CPU's SPMD
    partitioner computes wrong -- errors of the order of the gradient itself -- so the mapped case takes the
    dot-product form.)"""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    rng = np.random.default_rng(3)
    for k, st, p in ((1, 1, 0), (3, 2, 0), (3, 1, 1)):
        x = rng.standard_normal((8, 9, 9, 3)).astype(np.float32)
        w = rng.standard_normal((k, k, 3, 8)).astype(np.float32)

        def loss(x, w, conv):
            return jnp.sum(jnp.sin(jax.vmap(lambda xi: conv(xi, w))(x.reshape((2, 4) + x.shape[1:]))))

        ours = functools.partial(loss, conv=lambda x, w, st=st, p=p: ops.conv2d(x, w, st, p))
        ref = functools.partial(loss, conv=lambda x, w, st=st, p=p: lax.conv_general_dilated(
            x, w, (st, st), ((p, p), (p, p)), dimension_numbers=conv_lib.DIMENSION_NUMBERS))
        want = jax.jit(jax.grad(ref, (0, 1)))(x, w)
        got = jax.jit(jax.grad(ours, (0, 1)))(jax.device_put(x, NamedSharding(mesh, P("data"))),
                                                jax.device_put(w, NamedSharding(mesh, P(None, None, None, "model"))))
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-4, err_msg=str((k, st, p)))


def test_narrow_conv_is_matrix_products_on_cpu_and_exact():
    """A conv with few output channels (GLEAN's last one, 64 -> 3) runs on CPU as matrix products, forward and
    backward -- no conv in its CPU lowering, the plain conv in its CUDA one -- with the values of autodiff of
    ``lax.conv_general_dilated`` (kernels 3 and 5, paddings 0 to k-1, odd sizes, and under a sharded vmap). The
    input gradient of a conv with few input channels (VGG16's first) takes the same path."""
    assert conv_lib.is_narrow((3, 3, 64, 3), 1)
    assert not conv_lib.is_narrow((3, 3, 160, 32), 1) and not conv_lib.is_narrow((3, 3, 64, 3), 2)
    assert not conv_lib.is_narrow((1, 1, 64, 3), 1)
    assert not conv_lib.is_narrow((2, 1, 64, 32), 1)     # an up-conv phase: XLA's conv is faster (benchmarks/README.md)
    rng = np.random.default_rng(5)
    # forward narrow, then input gradient narrow (few input channels: the gradient is a conv back to them)
    for h, w_, ci, co, k, p in ((7, 5, 20, 2, 3, 1), (9, 8, 30, 1, 5, 2), (8, 7, 12, 1, 3, 0), (6, 9, 10, 1, 3, 2),
                                (10, 10, 64, 3, 3, 1), (7, 6, 2, 20, 3, 1), (9, 8, 1, 30, 5, 2), (8, 7, 1, 12, 3, 0)):
        assert conv_lib.is_narrow((k, k, ci, co), 1) != conv_lib.is_narrow((k, k, co, ci), 1)
        x = jnp.asarray(rng.standard_normal((2, h, w_, ci)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, ci, co)) / np.sqrt(k * k * ci), jnp.float32)

        def ref_conv(x, w, p=p):
            return lax.conv_general_dilated(x, w, (1, 1), ((p, p), (p, p)),
                                            dimension_numbers=conv_lib.DIMENSION_NUMBERS)

        ours = jax.jit(lambda x, w, p=p: ops.conv2d(x, w, 1, p))
        np.testing.assert_allclose(np.asarray(ours(x, w)), np.asarray(ref_conv(x, w)), rtol=0, atol=2e-6)
        got = jax.jit(jax.grad(lambda x, w, f=ours: jnp.sum(jnp.sin(f(x, w))), (0, 1)))(x, w)
        want = jax.grad(lambda x, w: jnp.sum(jnp.sin(ref_conv(x, w))), (0, 1))(x, w)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-5, err_msg=str((h, k, p)))
    x = jax.ShapeDtypeStruct((2, 16, 16, 64), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 64, 3), jnp.float32)
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(ops.conv2d(x, w, 1, 1) ** 2), argnums=(0, 1)))
    assert "stablehlo.convolution" not in grad.trace(x, w).lower(lowering_platforms=("cpu",)).as_text()
    assert "stablehlo.convolution" in jax.export.export(grad, platforms=["cuda"])(x, w).mlir_module()
    cpu, _ = _glean_grad_lowered()
    assert [3, 3, 64, 3] not in [c["kernel"] for c in _hlo_convs(cpu)]      # GLEAN's last conv takes this path
    w3 = jnp.zeros((3, 3, 3, 64), jnp.float32)                                # 3 -> 64 ch, as VGG16's first conv
    dx = jax.jit(jax.grad(lambda x: jnp.sum(ops.conv2d(x, w3, 1, 1) ** 2)))
    convs = _hlo_convs(dx.trace(jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
                       .lower(lowering_platforms=("cpu",)).as_text())
    assert [c["kernel"] for c in convs] == [[3, 3, 3, 64]]                    # the forward only; dx: products

    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    xs = rng.standard_normal((8, 6, 6, 20)).astype(np.float32)
    ws = (rng.standard_normal((3, 3, 20, 2)) / np.sqrt(180)).astype(np.float32)

    def loss(x, w, conv):
        return jnp.sum(jnp.sin(jax.vmap(lambda xi: conv(xi, w))(x.reshape((2, 4) + x.shape[1:]))))

    want = jax.jit(jax.grad(functools.partial(loss, conv=lambda x, w: lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=conv_lib.DIMENSION_NUMBERS)), (0, 1)))(xs, ws)
    got = jax.jit(jax.grad(functools.partial(loss, conv=lambda x, w: ops.conv2d(x, w, 1, 1)), (0, 1)))(
        jax.device_put(xs, NamedSharding(mesh, P("data"))), jax.device_put(ws, NamedSharding(mesh, P())))
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=2e-5)


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
                                     dimension_numbers=conv_lib.DIMENSION_NUMBERS, feature_group_count=n)
    else:
        wg = jnp.transpose(wn, (1, 2, 3, 0, 4)).reshape(3, 3, cin, n * cout)
        y = lax.conv_general_dilated(xg, wg, (1, 1), ((1, 1), (1, 1)), dimension_numbers=conv_lib.DIMENSION_NUMBERS,
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


def test_perceptual_loss_gradient_takes_the_fast_conv_paths_on_cpu():
    """The perceptual loss's gradient w.r.t. the prediction, lowered for CPU: VGG16's convs are ``conv.conv``'s, so
    every conv is a canonical-layout forward conv and the input gradient of the first conv (3 -> 64 ch, a conv back
    to 3 channels) is matrix products -- no conv with the (3, 3, 64, 3) kernel, nor any conv producing 3 channels
    (``flax.linen.Conv``'s autodiff had one). Compiled, the frozen VGG's weight gradients are gone (XLA drops them):
    one conv per layer in each of the two forwards (prediction, target) and one per input gradient but the first's. The
    values equal autodiff of ``lax.conv_general_dilated`` (the old ``flax.linen.Conv`` VGG) to 1e-5 of the
    gradient's largest element."""
    params = init_vgg16_params(0)
    n_convs = len(required_convs(("21",)))
    assert n_convs == 10 and VGG16_LAYERS[0] == ("conv", 3, 64)

    def loss(pred, gt, params=params):
        return losses.perceptual_loss(params, pred, gt, norm_img=False)

    grad = jax.jit(jax.grad(loss))
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    text = grad.trace(x, x).lower(lowering_platforms=("cpu",)).as_text()
    convs = _hlo_convs(text)
    assert convs and all(c["dims"] == CANONICAL for c in convs), convs
    assert [3, 3, 64, 3] not in [c["kernel"] for c in convs]
    assert not re.search(r"stablehlo\.convolution[^\n]*-> tensor<2x16x16x3xf32>", text)
    compiled = grad.lower(x, x).compile().as_text()
    out_shapes = re.findall(r"= f32\[([0-9,]+)\][^ ]* convolution\(", compiled)
    assert len(out_shapes) == 3 * n_convs - 1, out_shapes      # pred and gt forwards, pred's input gradients
    assert not [s for s in out_shapes if s.endswith(",3")], out_shapes

    rng = np.random.default_rng(2)
    pred = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    gt = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)

    def ref_loss(pred, gt):            # the same loss with autodiff of lax's conv (no custom backward)
        def feats(x):
            x = (x - jnp.asarray(losses.IMAGENET_MEAN)) / jnp.asarray(losses.IMAGENET_STD)
            for idx, layer in enumerate(VGG16_LAYERS[:22]):
                if layer[0] == "conv":
                    p = params[conv_name(idx)]
                    x = lax.conv_general_dilated(x, p["kernel"], (1, 1), ((1, 1), (1, 1)),
                                                 dimension_numbers=conv_lib.DIMENSION_NUMBERS) + p["bias"]
                elif layer[0] == "relu":
                    x = jax.nn.relu(x)
                else:
                    x = lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            return x
        return jnp.mean(jnp.square(feats(pred) - feats(lax.stop_gradient(gt)))) * 1e-2

    got, want = grad(pred, gt), jax.grad(ref_loss)(pred, gt)
    err = float(jnp.max(jnp.abs(got - want))) / float(jnp.max(jnp.abs(want)))
    assert err <= 1e-5, err


def test_max_pool_and_fir_backward_are_exact_and_lean():
    """VGG16's 2x2 max pool against ``flax.linen.max_pool`` (autodiff of ``reduce_window`` max): the same values and
    bit-identical gradients, ties included -- the first maximum of each window in window order gets the gradient,
    as XLA's ``select_and_scatter`` and torch's ``max_pool2d`` -- and odd sizes cropped. Autodiff's compiled gradient
    on CPU is a reduce-window argmax over int32 index maps of the input's size (1.25 GB of temporaries at VGG16's
    first pool at 1024x1024); ours has no reduce-window and an int8 index per output. The FIR filter's hand-written
    backward (the adjoint filter, one pad) against autodiff of the same filter: asymmetric taps, paddings 0-3."""
    import flax.linen as nn

    rng = np.random.default_rng(7)
    for shape, ties in (((2, 8, 6, 5), False), ((2, 9, 7, 3), False), ((2, 8, 8, 4), True), ((1, 5, 5, 2), True)):
        x = rng.standard_normal(shape).astype(np.float32)
        x = jnp.asarray(np.round(x) if ties else x)                # rounding: many ties, zeros among them
        g = jnp.asarray(rng.standard_normal((shape[0], shape[1] // 2, shape[2] // 2, shape[3])), jnp.float32)

        def ref(x):
            return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")

        np.testing.assert_array_equal(max_pool_2x2(x), ref(x))
        np.testing.assert_array_equal(jax.jit(jax.vjp(max_pool_2x2, x)[1])(g)[0], jax.vjp(ref, x)[1](g)[0])
    x = jax.ShapeDtypeStruct((1, 64, 64, 8), jnp.float32)
    ours = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(max_pool_2x2(x))))).lower(x).compile().as_text()
    auto = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), (2, 2)))))).lower(x).compile().as_text()
    assert "reduce-window" in auto and "reduce-window" not in ours and "s8[1,32,32,8]" in ours

    taps = (0.1, 0.5, -0.3, 0.7)
    for pad0, pad1, axis in ((0, 0, 1), (1, 2, 1), (3, 0, 2), (2, 2, 2)):
        x = jnp.asarray(rng.standard_normal((2, 9, 7, 3)), jnp.float32)
        y, vjp = jax.vjp(lambda x, a=pad0, b=pad1, ax=axis: fir_filter(x, taps, a, b, ax), x)
        y_ref, vjp_ref = jax.vjp(lambda x, a=pad0, b=pad1, ax=axis: _fir(x, taps, a, b, ax), x)
        np.testing.assert_array_equal(y, y_ref)
        ct = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
        np.testing.assert_allclose(vjp(ct)[0], vjp_ref(ct)[0], rtol=0, atol=1e-6)
