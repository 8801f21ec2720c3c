"""StyleGAN2 generator behaviour that needs no mmagic (its values against mmagic: ``test_stylegan2_parity.py``)."""

import jax
import jax.numpy as jnp
import numpy as np

from glean_jax.models.build import build_generator, init_variables


def test_style_mixing_with_a_drawn_index_runs_under_jit():
    """Two styles and no ``inject_index``: the index is drawn from the ``'mix'`` rng (mmagic: ``randint(1, L - 1)``)
    inside ``jit`` (it was an ``int()`` of a traced value, which failed there). Each image equals the mix at exactly
    one explicit index in [1, L - 1] (to 1e-5 of its largest value: jitted against op by op), and the seeds do not
    all draw the same one."""
    g = build_generator({"out_size": 16, "style_channels": 32, "num_mlps": 2, "channel_multiplier": 1})
    num_latents = 2 * 4 - 2        # 2 log2(16) - 2
    v = init_variables("stylegan2_generator", g, jax.random.key(0))
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal((2, 32)), jnp.float32) for _ in range(2))
    mixed = jax.jit(lambda v, a, b, k: g.apply(v, [a, b], noise="fixed", rngs={"mix": k}))
    explicit = {i: np.asarray(g.apply(v, [a, b], noise="fixed", inject_index=i)) for i in range(1, num_latents)}
    drawn = []
    for seed in range(8):
        got = np.asarray(mixed(v, a, b, jax.random.key(seed)))
        same = [i for i, want in explicit.items() if np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))]
        assert len(same) == 1, (seed, same)
        drawn.append(same[0])
    assert len(set(drawn)) > 1, drawn
