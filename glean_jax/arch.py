"""The architecture record of a GLEAN: one frozen value that everything else reads.

:class:`GleanArch` holds the hyper-parameters of mmagic's ``GLEANStyleGANv2(in_size, out_size, rrdb_channels,
num_rrdbs, style_channels, num_mlps, channel_multiplier)`` (mmagic/models/editors/glean/glean_styleganv2.py) and what
follows from them: the StyleGAN2 channel table, the number of W+ latents, the resolutions of the encoder, fusion and
decoder levels, and the architectures of the bank and of the discriminator. The training config's ``model`` fields,
``model.json``, the Flax module (:class:`glean_jax.models.glean.GLEAN`), the converters and the benchmark all build
from it; the data sizes are the record's ``in_size`` / ``out_size``.

Importing this module imports neither JAX nor flax (the config reads it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from glean_jax.errors import UserError

MAX_SIZE = 1024


def stylegan2_channels(channel_multiplier: int = 2) -> dict[int, int]:
    """mmagic's StyleGAN2 channel table ``C[r]`` (512 up to 32x32, then ``cm * 256 / (r / 64)``)."""
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm,
            1024: 16 * cm}


def is_pow2(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and v & (v - 1) == 0


def check_size(size: int, what: str = "size") -> int:
    """Validates a StyleGAN2 resolution (power of two, 8..1024); returns log2(size)."""
    if not is_pow2(size) or size < 8 or size > MAX_SIZE:
        raise ValueError(f"{what} must be a power of two between 8 and {MAX_SIZE}, got {size!r}")
    return int(math.log2(size))


def num_latents(out_size: int) -> int:
    """W+ latents of a StyleGAN2 bank of output ``out_size``: two per resolution 4..out_size, minus one."""
    return 2 * int(math.log2(out_size)) - 2


def bank_sizes(out_size: int) -> tuple[int, ...]:
    """Resolutions of a StyleGAN2 bank's levels above 4x4: 8, 16, ..., out_size."""
    return tuple(2 ** i for i in range(3, int(math.log2(out_size)) + 1))


@dataclasses.dataclass(frozen=True)
class GleanArch:
    """A GLEAN's architecture (mmagic ``GLEANStyleGANv2`` arguments, defaults as mmagic's).

    ``fp16_enabled`` selects mmagic's fp16 numerics of the bank and discriminator (the fp16 seed configs); it is
    part of the function, so of the record. Construction validates the geometry (:class:`ValueError`);
    :meth:`from_dict` reads a stored description and names its source in a :class:`UserError`.
    """

    in_size: int
    out_size: int
    rrdb_channels: int = 64
    num_rrdbs: int = 23
    style_channels: int = 512
    num_mlps: int = 8
    channel_multiplier: int = 2
    fp16_enabled: bool = False

    def __post_init__(self):
        check_size(self.out_size, "out_size")
        if not is_pow2(self.in_size) or self.in_size < 4:
            raise ValueError(f"in_size must be a power of two >= 4, got {self.in_size!r}")
        if self.in_size >= self.out_size:
            raise ValueError(f"in_size must be smaller than out_size, got in_size={self.in_size}, "
                             f"out_size={self.out_size}")
        for name in ("rrdb_channels", "num_rrdbs", "style_channels", "num_mlps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.channel_multiplier not in (1, 2):
            raise ValueError(f"channel_multiplier must be 1 or 2, got {self.channel_multiplier!r}")
        if not isinstance(self.fp16_enabled, bool):
            raise ValueError(f"fp16_enabled must be true or false, got {self.fp16_enabled!r}")

    # --- reading and writing -----------------------------------------------------------------------------------
    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str) -> GleanArch:
        """The record of a stored description (``model.json``'s ``generator``, a config's ``model``); fields it
        lacks take mmagic's defaults, other keys are ignored. Errors name ``source`` and the field."""
        if not hasattr(d, "get"):
            raise UserError(f"{source}: the GLEAN architecture is a {type(d).__name__}; expected a mapping of "
                            f"{', '.join(cls.fields())}")
        kw = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                if f.default is dataclasses.MISSING:
                    raise UserError(f"{source}: the GLEAN architecture has no {f.name}; expected an integer")
                continue
            v = d[f.name]
            want = bool if f.name == "fp16_enabled" else int
            if want is int and isinstance(v, float) and v == int(v):
                v = int(v)
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise UserError(f"{source}: {f.name}={v!r}; expected {'true/false' if want is bool else 'an integer'}")
            kw[f.name] = v
        try:
            return cls(**kw)
        except ValueError as e:
            raise UserError(f"{source}: {e}") from None

    # --- what follows from it ------------------------------------------------------------------------------------
    @property
    def channels(self) -> dict[int, int]:
        """Feature channels at each resolution (the bank's table, which the encoder and decoder share)."""
        return stylegan2_channels(self.channel_multiplier)

    @property
    def num_latents(self) -> int:
        """W+ latents the encoder predicts (one per bank style input)."""
        return num_latents(self.out_size)

    @property
    def encoder_sizes(self) -> tuple[int, ...]:
        """Resolutions of the encoder features, from ``in_size`` down to 4 (each fused into the bank)."""
        return tuple(2 ** i for i in range(int(math.log2(self.in_size)), 1, -1))

    @property
    def bank_sizes(self) -> tuple[int, ...]:
        """Resolutions of the bank's levels above 4x4: 8, 16, ..., out_size."""
        return bank_sizes(self.out_size)

    @property
    def upsample_sizes(self) -> tuple[int, ...]:
        """Output resolutions of the decoder's up-samplers: 2 in_size, ..., out_size."""
        return tuple(2 ** i for i in range(int(math.log2(self.in_size)) + 1, int(math.log2(self.out_size)) + 1))

    @property
    def scale(self) -> int:
        return self.out_size // self.in_size

    def bank(self) -> dict[str, Any]:
        """The StyleGAN2 generator inside (``StyleGAN2Generator`` arguments)."""
        return {"out_size": self.out_size, "style_channels": self.style_channels, "num_mlps": self.num_mlps,
                "channel_multiplier": self.channel_multiplier, "lr_mlp": 0.01, "fp16_enabled": self.fp16_enabled}

    def discriminator(self) -> dict[str, Any]:
        """The discriminator GLEAN trains with (``StyleGAN2Discriminator(out_size, channel_multiplier)``)."""
        return {"in_size": self.out_size, "channel_multiplier": self.channel_multiplier,
                "fp16_enabled": self.fp16_enabled}

    def mmagic_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of mmagic's ``GLEANStyleGANv2(in_size, out_size, **kwargs)`` for this record."""
        return {"rrdb_channels": self.rrdb_channels, "num_rrdbs": self.num_rrdbs,
                "style_channels": self.style_channels, "num_mlps": self.num_mlps,
                "channel_multiplier": self.channel_multiplier}

    def describe(self) -> str:
        return (f"GLEAN {self.in_size}->{self.out_size} with {self.num_rrdbs} RRDBs of {self.rrdb_channels} channels, "
                f"style_channels={self.style_channels}, channel_multiplier={self.channel_multiplier}")
