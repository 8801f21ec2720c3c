"""FFHQ face alignment geometry for :mod:`glean_jax.faces`: landmarks -> crop frame -> affine maps, crop, paste-back.

Coordinates are pixel indices ``[x, y]`` (a pixel's centre is at integer coordinates, OpenCV's ``warpAffine``
convention). The crop frame is NVIDIA's FFHQ recipe (``ffhq-dataset/download_ffhq.py``, ``recreate_aligned_images``)
written afresh from its formulas: from the two eye centres and the two mouth corners::

    eye_avg = (eye_l + eye_r) / 2, eye_to_eye = eye_r - eye_l, mouth_avg = (mouth_l + mouth_r) / 2,
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - flipud(eye_to_mouth) * [-1, 1];  x /= |x|;  x *= max(2.0 |eye_to_eye|, 1.8 |eye_to_mouth|)
    y = flipud(x) * [-1, 1];  c = eye_avg + 0.1 eye_to_mouth
    quad = [c - x - y, c - x + y, c + x + y, c + x - y]   (top-left, bottom-left, bottom-right, top-right)

The quad (side ``2 |x|``) maps onto the crop square: its corners go to the crop's outer pixel edges, as FFHQ's PIL
``QUAD`` transform of ``quad + 0.5`` does, i.e. crop index = ``S / (2|x|) * R (p - c) + S / 2 - 0.5``.
"""

from __future__ import annotations

import math

import numpy as np

# dlib's 5-point model has no mouth: mouth_avg = eye_avg + MOUTH_FROM_NOSE_BASE * (nose_base - eye_avg), and the
# corners sit +-MOUTH_WIDTH/2 eye distances either side of it along the eye line. Both ratios are read off the mean
# dlib 68-point face (OpenFace's align_dlib TEMPLATE, the mean of dlib's 68 landmarks over its training faces):
# mouth_avg lies 0.4172 below the eye centres' mean (6-point eye means, along the eye line's normal), the nose base
# (point 33, what the 5-point model marks) 0.3086 below it -> 1.352; with eye centres taken as the mid-points of the
# eye corners (what the 5-point model gives) it is 1.359. Mouth width |48-54| / eye distance = 0.906.
MOUTH_FROM_NOSE_BASE = 1.355
MOUTH_WIDTH = 0.906
# FFHQ's eye centre is the mean of 6 eye points; the corners' mid-point sits lower by 0.0146 eye distances in that
# mean face (the upper lid points are higher than the lower ones), so we lift it by that much.
EYE_CORNER_LIFT = 0.0146


def landmarks5_from_68(pts: np.ndarray) -> np.ndarray:
    """(68, 2) dlib/iBUG landmarks -> (5, 2): eye centres (means of 36-41, 42-47), nose tip (30), mouth corners
    (48, 54). Point order: viewer's left first, as FFHQ's ``eye_left`` / ``mouth_left``."""
    pts = np.asarray(pts, np.float64)
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


def landmarks5_from_dlib5(pts: np.ndarray) -> np.ndarray:
    """(5, 2) of dlib's ``shape_predictor_5_face_landmarks`` (0, 1: corners of the eye on the viewer's right; 2, 3:
    the other eye's; 4: the nose base) -> (5, 2) as :func:`landmarks5_from_68`, with the mouth estimated (see
    ``MOUTH_FROM_NOSE_BASE``) and point 2 the nose base (this model marks no nose tip)."""
    pts = np.asarray(pts, np.float64)
    eye_l, eye_r, nose = (pts[2] + pts[3]) / 2, (pts[0] + pts[1]) / 2, pts[4]
    e2e = eye_r - eye_l
    normal = np.array([-e2e[1], e2e[0]])   # points down the face when eye_l is on the viewer's left
    eye_l, eye_r = eye_l - EYE_CORNER_LIFT * normal, eye_r - EYE_CORNER_LIFT * normal
    eye_avg = (eye_l + eye_r) / 2
    mouth = eye_avg + MOUTH_FROM_NOSE_BASE * (nose - eye_avg)
    return np.stack([eye_l, eye_r, nose, mouth - MOUTH_WIDTH / 2 * e2e, mouth + MOUTH_WIDTH / 2 * e2e])


def ffhq_frame(lm5: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(c, x, y) of the FFHQ recipe from (5, 2) landmarks: the crop centre and its two half-side vectors."""
    lm5 = np.asarray(lm5, np.float64)
    eye_l, eye_r, mouth_l, mouth_r = lm5[0], lm5[1], lm5[3], lm5[4]
    eye_avg = (eye_l + eye_r) * 0.5
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = (mouth_l + mouth_r) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return c, x, y


def frame_summary(lm5: np.ndarray) -> dict:
    """{"center": [x, y], "side": qsize, "angle": degrees of the crop's x axis (clockwise on screen)}."""
    c, x, _ = ffhq_frame(lm5)
    return {"center": [float(c[0]), float(c[1])], "side": float(2 * np.hypot(*x)),
            "angle": float(math.degrees(math.atan2(x[1], x[0])))}


def quad(lm5: np.ndarray) -> np.ndarray:
    """(4, 2) FFHQ quad: top-left, bottom-left, bottom-right, top-right."""
    c, x, y = ffhq_frame(lm5)
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def crop_matrix(lm5: np.ndarray, size: int) -> np.ndarray:
    """(2, 3) affine: photo pixel -> pixel of the ``size`` x ``size`` aligned crop."""
    c, x, y = ffhq_frame(lm5)
    h = np.hypot(*x)
    rot = np.stack([x, y]) / h                      # rows: the crop's x and y axes in the photo
    lin = rot * (size / (2 * h))
    return np.concatenate([lin, (size / 2 - 0.5 - lin @ c)[:, None]], axis=1)


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(2, 3) affine ``a`` after ``b`` (``a(b(p))``)."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine."""
    return np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Maps (n, 2) points through a (2, 3) affine."""
    pts = np.asarray(pts, np.float64)
    return pts @ np.asarray(m)[:, :2].T + np.asarray(m)[:, 2]


def scale_matrix(factor: float) -> np.ndarray:
    """(2, 3): pixel of an image -> pixel of it resized by ``factor`` (pixel-centre aligned, as cv2.resize)."""
    return np.array([[factor, 0, (factor - 1) / 2], [0, factor, (factor - 1) / 2]])


def align_crop(photo: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` aligned crop of uint8 ``photo`` under ``matrix`` (photo -> crop pixels).

    Shrinking (a face larger than the crop) is antialiased: the crop is first warped (bicubic) at k times its size,
    k = ceil(1 / scale) so that this warp does not shrink, then reduced by the integer k with ``INTER_AREA`` (a k x k
    box mean). Outside the photo the crop reflects it (``BORDER_REFLECT_101``; FFHQ also reflects, then blurs)."""
    import cv2

    scale = math.sqrt(abs(np.linalg.det(np.asarray(matrix)[:, :2])))
    k = max(1, math.ceil(1 / scale - 1e-6))
    m = compose(scale_matrix(k), matrix) if k > 1 else np.asarray(matrix, np.float64)
    big = cv2.warpAffine(photo, m, (size * k, size * k), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
    if k > 1:
        big = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return big.reshape(size, size, -1)


def feather_mask(size: int, feather: float) -> np.ndarray:
    """float32 (size, size) weight: 1 inside, falling smoothly (smoothstep) to 0 over ``feather`` x size pixels at
    each edge of the crop."""
    t = np.arange(size, dtype=np.float64) + 0.5
    d = np.minimum(t, size - t) / max(feather * size, 1e-6)
    ramp = np.clip(d, 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)
    return np.outer(ramp, ramp).astype(np.float32)


def paste(canvas: np.ndarray, face: np.ndarray, canvas_to_face: np.ndarray, feather: float) -> np.ndarray:
    """Blends ``face`` (uint8 (s, s, 3)) into ``canvas`` (uint8, modified in place and returned) where the inverse
    warp puts it, weighted by :func:`feather_mask` (bilinear). Only the face's bounding box on the canvas is
    touched."""
    import cv2

    s = face.shape[0]
    corners = apply(invert(canvas_to_face), [[-0.5, -0.5], [-0.5, s - 0.5], [s - 0.5, s - 0.5], [s - 0.5, -0.5]])
    h, w = canvas.shape[:2]
    x0, y0 = (max(0, int(math.floor(v))) for v in corners.min(0))
    x1, y1 = min(w, int(math.ceil(corners[:, 0].max())) + 1), min(h, int(math.ceil(corners[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return canvas
    m = compose(canvas_to_face, np.array([[1.0, 0, x0], [0, 1.0, y0]]))   # window pixel -> face pixel
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(face, m, size, flags=flags, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
    alpha = cv2.warpAffine(feather_mask(s, feather), m, size, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0.0)[..., None]
    window = canvas[y0:y1, x0:x1].astype(np.float32)
    canvas[y0:y1, x0:x1] = np.clip(np.rint(window + alpha * (warped - window)), 0, 255).astype(np.uint8)
    return canvas
