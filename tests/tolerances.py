"""The float32 parity rule shared by every test that compares a network's values with mmagic / torch.

``scaled_error(ours, ref) = max|ours - ref| / max|ref|``: the worst absolute difference measured in units of the
reference tensor's own largest magnitude, per compared tensor (a block's feature map, an output, a logit vector).

Why relative to each tensor's scale: both sides compute in float32 with different summation orders (XLA vs oneDNN
kernels, thread splits, blocking), and those orders differ between machines. The resulting differences are rounding
noise proportional to the magnitude of the values being summed, so a block whose activations reach 45 (GLEAN's
decoder) differs by ~100x more in absolute terms than a block that stays below 0.05 (its encoder's deep levels),
while both sit at ~1e-6 of their own scale. An absolute tolerance is therefore too tight for the large blocks on
some machines (issue #20: the 32->256 decoder failed 1e-4 absolute at 1.4e-4..2.6e-4, i.e. 3e-6..6e-6 of scale)
and too loose for the small ones.

``PARITY_RTOL = 3e-5``: the largest value measured on GLEAN's blocks, the StyleGAN2 outputs and the discriminator
logits is 1.5e-6 on one machine and 5.8e-6 on another (5x margin). A real mistake is far above it: scaling one
decoder bias by 1.01 gives >= 6.3e-5 at its block, zeroing a bias or transposing a kernel >= 1e-1 (checked by
``tests/test_glean_parity.py::test_mutations_are_caught``).
"""

from __future__ import annotations

import numpy as np

PARITY_RTOL = 3e-5


def scaled_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max|ours - ref| / max|ref|`` (float64); shapes must match and ``ref`` must not be all zeros."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} vs reference {ref.shape}"
    scale = float(np.abs(ref).max())
    assert scale > 0.0, "an all-zero reference makes a relative comparison meaningless"
    return float(np.abs(ours - ref).max()) / scale


def assert_parity(ours: np.ndarray, ref: np.ndarray, what: str, rtol: float = PARITY_RTOL) -> float:
    """Asserts ``scaled_error(ours, ref) <= rtol`` with a message naming ``what``; returns the error."""
    err = scaled_error(ours, ref)
    assert err <= rtol, (f"{what}: max|d| / max|ref| = {err:.3g} > {rtol:g} "
                         f"(max|d| = {err * float(np.abs(ref).max()):.3g}, max|ref| = {float(np.abs(ref).max()):.3g})")
    return err
