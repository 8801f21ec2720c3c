"""The blind (online) degradation pipeline of mmagic's ``glean_in128out1024_4xb2-300k_ffhq-celeba-hq`` config.

mmagic applies, to ``img`` = a copy of the uint8 RGB GT (the config's ``train_pipeline``;
the transforms are in ``mmagic/datasets/transforms/random_degradations.py``), in order:

1. ``RandomBlur``: a 41x41 Gaussian kernel, ``iso`` or ``aniso`` (p = .5/.5), sigma_x, sigma_y ~ U(0.2, 10),
   rotation ~ U(-3.1416, 3.1416); ``cv2.filter2D`` on the uint8 image (reflect-101 borders).
2. ``RandomResize`` down: factor ~ U(1/32, 1), size = int(H * f), int(W * f); bilinear / area / bicubic
   uniformly (cv2).
3. ``RandomNoise``: colour Gaussian noise, sigma ~ U(0, 50) on the 0..255 scale; the image becomes float32.
4. ``RandomJPEGCompression``: quality = round(U(5, 50)), ``cv2.imencode``/``imdecode``; cv2 saturate-converts
   the float input to uint8 and treats the RGB array as BGR (both reproduced here).
5. ``RandomResize`` back to (H, W) with a random interpolation of the same three.
6. ``Clip`` [0, 255] (a no-op on uint8).
7. ``RandomResize`` to (in_size, in_size) with ``area``.
8. Joint horizontal flip (done by the loader, see :mod:`glean_jax.data.loader`).

Each operation below, with its parameters fixed, gives exactly the output of the mmagic transform of the same
name (tested against the real classes). The random parameters are drawn by :func:`sample_blind_params` from
a ``numpy.random.Generator`` (mmagic draws them from the global ``np.random`` / ``random`` state, so the
streams differ; the distributions are the same and are tested statistically). Everything is deterministic given
the generator, which the loader seeds from (seed, epoch, index).

OpenCV (``opencv-python-headless``) is needed for this pipeline only: the parity with mmagic rests on calling
the same cv2 kernels (``filter2D``, ``resize``, JPEG codec).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from glean_jax.errors import UserError

KERNEL_SIZE = 41
SIGMA_RANGE = (0.2, 10.0)
ROTATION_RANGE = (-3.1416, 3.1416)  # the config's literal values, not +-pi
KERNEL_TYPES = ("iso", "aniso")
DOWN_SCALE_RANGE = (0.03125, 1.0)
INTERPOLATIONS = ("bilinear", "area", "bicubic")
NOISE_SIGMA_RANGE = (0.0, 50.0)
JPEG_QUALITY_RANGE = (5, 50)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise UserError("degradation='blind' needs OpenCV: pip install opencv-python-headless") from e
    return cv2


def _interp_flag(name: str) -> int:
    cv2 = _cv2()
    flags = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC,
             "lanczos": cv2.INTER_LANCZOS4}
    if name not in flags:
        raise UserError(f"interpolation {name!r}: expected one of {', '.join(flags)}")
    return flags[name]


# ----------------------------------------------------------------------------------------------- blur kernels

def _grid(size: int) -> np.ndarray:
    """(size, size, 2) float64 grid of (x, y) offsets from the centre, as mmagic's ``_mesh_grid``."""
    r = np.arange(-size // 2 + 1.0, size // 2 + 1.0)
    xx, yy = np.meshgrid(r, r)
    return np.stack([xx, yy], axis=-1)


def gaussian_kernel(kernel_type: str, size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """Normalised (size, size) float64 Gaussian blur kernel, equal to mmagic's ``RandomBlur`` kernel.

    ``iso`` uses sigma_x only (covariance diag(sigma_x^2) in float32); ``aniso`` uses the float32 covariance
    R diag(sigma_x^2, sigma_y^2) R^T with R the rotation by ``theta``. As in mmagic
    (``random_bivariate_gaussian_kernel``), the kernel is normalised twice.
    """
    if kernel_type not in KERNEL_TYPES:
        raise UserError(f"blur kernel type {kernel_type!r}: expected one of {', '.join(KERNEL_TYPES)}")
    if size % 2 != 1:
        raise UserError(f"blur kernel size {size}: expected an odd number")
    if kernel_type == "iso":
        cov = np.array([[sigma_x**2, 0], [0, sigma_x**2]]).astype(np.float32)
    else:
        d = np.array([[sigma_x**2, 0], [0, sigma_y**2]]).astype(np.float32)
        c, s = np.cos(theta), np.sin(theta)
        r = np.array([[c, -s], [s, c]]).astype(np.float32)
        cov = np.matmul(r, np.matmul(d, r.T))
    grid = _grid(size)
    k = np.exp(-0.5 * np.sum(np.matmul(grid, np.linalg.inv(cov)) * grid, 2))
    k = k / np.sum(k)
    return k / np.sum(k)


def blur(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``cv2.filter2D(img, -1, kernel)``: same dtype out, reflect-101 borders (mmagic ``RandomBlur``)."""
    return _cv2().filter2D(img, -1, kernel)


# --------------------------------------------------------------------------------------------- other ops

def resize(img: np.ndarray, size_hw: Sequence[int], interpolation: str) -> np.ndarray:
    """``cv2.resize`` to (h, w) with a named interpolation (mmagic ``RandomResize``)."""
    h, w = int(size_hw[0]), int(size_hw[1])
    if h < 1 or w < 1:
        raise UserError(f"resize to {h}x{w}: expected a positive size")
    return _cv2().resize(img, (w, h), interpolation=_interp_flag(interpolation))


def down_size(hw: Sequence[int], factor: float) -> tuple[int, int]:
    """mmagic ``RandomResize`` target size for a scale factor: (int(h * f), int(w * f)), at least 1."""
    return max(1, int(hw[0] * factor)), max(1, int(hw[1] * factor))


def add_gaussian_noise(img: np.ndarray, sigma: float, std_normal: np.ndarray) -> np.ndarray:
    """``img + float32(z) * sigma`` (float32 out), mmagic ``RandomNoise`` (gaussian, colour noise).

    ``std_normal`` holds the standard normal draws, of the image's shape.
    """
    z = np.asarray(std_normal, dtype=np.float32)
    if z.shape != img.shape:
        raise UserError(f"noise of shape {z.shape}; expected the image shape {img.shape}")
    return img + z * float(sigma)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG encode + decode with cv2 at ``quality`` (mmagic ``RandomJPEGCompression``, colour, no bgr2rgb).

    A float image is first saturate-converted to uint8 (round half to even, clip), as ``cv2.imencode`` does.
    """
    cv2 = _cv2()
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:  # pragma: no cover - cv2 only fails on invalid input
        raise UserError(f"JPEG encoding failed for an image of shape {img.shape}")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


# ---------------------------------------------------------------------------------------- the whole chain

@dataclasses.dataclass(frozen=True)
class BlindParams:
    """All random choices of one blind degradation (the flip is drawn by the loader)."""

    kernel_type: str
    sigma_x: float
    sigma_y: float
    theta: float
    down_factor: float
    down_interp: str
    noise_sigma: float
    jpeg_quality: int
    up_interp: str


def sample_blind_params(rng: np.random.Generator) -> BlindParams:
    """Draws the parameters with the distributions of the in128out1024 config.

    kernel type uniform over iso/aniso; sigma_x, sigma_y ~ U(0.2, 10); theta ~ U(-3.1416, 3.1416);
    down factor ~ U(1/32, 1); interpolations uniform over bilinear/area/bicubic; noise sigma ~ U(0, 50);
    JPEG quality = round(U(5, 50)) (Python's round, as mmagic).
    """
    return BlindParams(
        kernel_type=KERNEL_TYPES[int(rng.integers(2))],
        sigma_x=float(rng.uniform(*SIGMA_RANGE)),
        sigma_y=float(rng.uniform(*SIGMA_RANGE)),
        theta=float(rng.uniform(*ROTATION_RANGE)),
        down_factor=float(rng.uniform(*DOWN_SCALE_RANGE)),
        down_interp=INTERPOLATIONS[int(rng.integers(3))],
        noise_sigma=float(rng.uniform(*NOISE_SIGMA_RANGE)),
        jpeg_quality=int(round(float(rng.uniform(*JPEG_QUALITY_RANGE)))),
        up_interp=INTERPOLATIONS[int(rng.integers(3))],
    )


def apply_blind(gt: np.ndarray, params: BlindParams, in_size: int,
                standard_normal: Callable[[tuple[int, ...]], np.ndarray]) -> np.ndarray:
    """Degrades a uint8 RGB GT (H, W, 3) into the uint8 (in_size, in_size, 3) LQ with fixed ``params``.

    ``standard_normal(shape)`` supplies the noise draws (standard normal, cast to float32).
    """
    if gt.dtype != np.uint8 or gt.ndim != 3 or gt.shape[2] != 3:
        raise UserError(f"blind degradation input of shape {gt.shape} dtype {gt.dtype}; expected uint8 (H, W, 3)")
    h, w = gt.shape[:2]
    img = blur(gt, gaussian_kernel(params.kernel_type, KERNEL_SIZE, params.sigma_x, params.sigma_y, params.theta))
    img = resize(img, down_size((h, w), params.down_factor), params.down_interp)
    img = add_gaussian_noise(img, params.noise_sigma, standard_normal(img.shape))
    img = jpeg(img, params.jpeg_quality)
    img = resize(img, (h, w), params.up_interp)
    img = np.clip(img, 0, 255)
    return resize(img, (in_size, in_size), "area")


def blind_degrade(gt: np.ndarray, rng: np.random.Generator, in_size: int) -> np.ndarray:
    """Samples parameters from ``rng`` and degrades ``gt`` (see :func:`apply_blind`); noise from ``rng`` too."""
    params = sample_blind_params(rng)
    return apply_blind(gt, params, in_size, lambda shape: rng.standard_normal(shape, dtype=np.float32))
