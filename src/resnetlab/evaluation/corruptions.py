"""The 15 common corruptions of CIFAR-10-C at 5 severities, generated on the fly and seeded.

From Hendrycks & Dietterich (2019), "Benchmarking Neural Network Robustness to Common Corruptions
and Perturbations" (ICLR), sec. 3 and appendix, with the severity parameters of their CIFAR-10-C
generator (``make_cifar_c.py``). Written here on numpy, scipy and PIL (no OpenCV, scikit-image or
ImageMagick); where those libraries defined the operation we follow their definition:

- blur kernels (defocus, glass, elastic) use OpenCV's/scikit-image's border rules, expressed with
  scipy's modes (OpenCV ``BORDER_REFLECT_101`` = scipy ``mirror``);
- motion blur follows ImageMagick's ``MotionBlurImage`` (a one-sided Gaussian-weighted line of
  ``2 * ceil(radius) + 1`` taps at integer pixel offsets, edge pixels repeated);
- glass blur ("locally shuffle pixels") moves pixels as the published generator does, which
  copies a neighbour onto each pixel rather than swapping the two (see :func:`glass_blur`);
- frost blends the image with frost *photographs* in the original; we have none, so a frost
  texture is synthesised procedurally (fractal haze plus thin ice-crystal strokes, bluish white),
  seeded like every other random draw here. Frost numbers are therefore not comparable with
  published CIFAR-10-C frost numbers.

Every function takes and returns uint8 (H, W, 3) RGB arrays. Randomness comes only from
:func:`image_rng`, seeded by ``(seed, image index, corruption, severity)``, so a corrupted image does
not depend on the batch it was made in or on the order of evaluation. As in the published data, the
float result is clipped to [0, 255] and truncated to uint8 (``np.uint8(x)``).

The parameters are for CIFAR's 32x32 images. At another size, parameters given in pixels (blur
radii and sigmas, glass-blur sigma, elastic and zoom geometry) are scaled by ``min(H, W) / 32``;
our choice, so that a corruption covers the same fraction of the picture.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from resnetlab.errors import ConfigError

CORRUPTIONS = (  # the paper's order: noise, blur, weather, digital
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)
FAMILIES = {"noise": CORRUPTIONS[0:3], "blur": CORRUPTIONS[3:7], "weather": CORRUPTIONS[7:11], "digital": CORRUPTIONS[11:15]}

# CIFAR-10-C severity parameters, severity 1..5 (make_cifar_c.py).
PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # std of additive noise, image in [0, 1]
    "shot_noise": (500, 250, 100, 75, 50),  # photons per unit intensity (Poisson rate)
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),  # fraction of values set to 0 or 1 (salt & pepper)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),  # disk radius px, anti-alias sigma
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),  # sigma, max shift px, iterations
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),  # ImageMagick radius, sigma (px)
    "zoom_blur": tuple(np.arange(1, top, 0.01) for top in (1.06, 1.11, 1.16, 1.21, 1.26)),  # zoom factors averaged
    # loc, scale of the flake noise, flake zoom, threshold, motion radius, motion sigma, image blend
    "snow": ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),  # image weight, frost weight
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),  # fog strength, fractal wibble decay
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # factor on the distance from the per-channel mean
    # elastic: displacement scale, displacement smoothing sigma, affine jitter; in units of the side (32 px)
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # downsampling factor (box filter both ways)
    "jpeg_compression": (80, 65, 58, 50, 40),  # PIL JPEG quality
}


def parse_types(text: str | None) -> list[str]:
    """``"fog,snow"`` -> ``["fog", "snow"]`` (None or "all": all 15); unknown names raise ConfigError."""
    if text is None or text.strip() in ("", "all"):
        return list(CORRUPTIONS)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in CORRUPTIONS]
    if unknown:
        raise ConfigError(f"--corruption-types: unknown corruption {', '.join(map(repr, unknown))}; "
                          f"valid names: {', '.join(CORRUPTIONS)}")
    return list(dict.fromkeys(names))


def parse_severities(text: str | None) -> list[int]:
    """``"1,3,5"`` -> ``[1, 3, 5]`` (None: 1 to 5); anything outside 1..5 raises ConfigError."""
    if text is None or text.strip() == "":
        return list(SEVERITIES)
    try:
        values = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        values = []
    if not values or any(v not in SEVERITIES for v in values):
        raise ConfigError(f"--severities {text!r}: give comma-separated integers from 1 to 5, e.g. 1,3,5")
    return sorted(set(values))


def image_rng(seed: int, index: int, name: str, severity: int) -> np.random.Generator:
    """The random stream of one (image, corruption, severity): independent of batches and order."""
    return np.random.default_rng([int(seed), int(index), CORRUPTIONS.index(name), int(severity)])


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 as the published generator stores them: clip, scale, truncate."""
    return (np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def _scale(image: np.ndarray) -> float:
    return min(image.shape[:2]) / 32.0


def _gaussian(x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's ``filters.gaussian`` on a float (H, W[, C]) image: spatial axes only, edge
    pixels repeated ('nearest'), truncated at 4 sigma: its defaults, which the generator relied on."""
    sig = (sigma, sigma) + (0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, sigma=sig, mode=mode, truncate=truncate)


def _gaussian_taps(sigma: float, radius: int = 1) -> np.ndarray:
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    return taps / taps.sum()


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """The defocus kernel: a disk of ``radius`` px on a grid of at least 17x17, normalised, then
    smoothed by a 3x3 Gaussian of sigma ``alias_blur`` (OpenCV GaussianBlur, reflect-101 border).
    Returned cropped to its non-zero support (the zeros add nothing to the convolution)."""
    half = 8 if radius <= 8 else int(np.ceil(radius))
    taps_radius = 1 if radius <= 8 else 2  # ksize (3, 3), or (5, 5) for big disks
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = _gaussian_taps(alias_blur, taps_radius)
    disk = ndimage.correlate1d(disk, taps, axis=0, mode="mirror")
    disk = ndimage.correlate1d(disk, taps, axis=1, mode="mirror")
    rows, cols = np.nonzero(disk.any(axis=1))[0], np.nonzero(disk.any(axis=0))[0]
    return disk[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]


def _motion_blur(x: np.ndarray, radius: float, sigma: float, angle: float) -> np.ndarray:
    """ImageMagick's MotionBlurImage on a float (H, W[, C]) image: pixel p becomes the weighted sum
    of the pixels at p + round(i * direction), i = 0 .. 2*ceil(radius), weights exp(-i^2 / 2 sigma^2)
    normalised; outside the image the edge pixel is repeated. ``angle`` in degrees (0 = along +x)."""
    width = 2 * int(np.ceil(radius)) + 1
    weights = np.exp(-np.arange(width) ** 2 / (2.0 * sigma ** 2))
    weights /= weights.sum()
    theta = np.deg2rad(angle)
    h, w = x.shape[:2]
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    out = np.zeros_like(x, dtype=np.float64)
    for i, weight in enumerate(weights):
        dx = int(np.ceil(i * np.cos(theta) - 0.5))
        dy = int(np.ceil(i * np.sin(theta) - 0.5))
        out += weight * x[np.clip(rows + dy, 0, h - 1), np.clip(cols + dx, 0, w - 1)]
    return out


def _clipped_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre by ``factor`` (bilinear) and crop back to the input's (H, W)."""
    h, w = x.shape[:2]
    ch, cw = int(np.ceil(h / factor)), int(np.ceil(w / factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    zoomed = ndimage.zoom(x[top: top + ch, left: left + cw], (factor, factor) + (1,) * (x.ndim - 2), order=1)
    trim_top, trim_left = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
    return zoomed[trim_top: trim_top + h, trim_left: trim_left + w]


def plasma_fractal(size: int, wibble_decay: float, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) diamond-square height map in [0, 1] (size a power of two): the fog layer.

    The random offset added at each level starts at +-100 * 100 and shrinks by ``wibble_decay``
    per halving of the step, so a bigger decay gives a smoother fog.
    """
    if size & (size - 1):
        raise ValueError(f"plasma_fractal: size {size} is not a power of two")
    heights = np.zeros((size, size))
    step, wibble = size, 100.0

    def wibbled_mean(total):
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        # squares: the centre of each square is the mean of its 4 corners
        corners = heights[0:size:step, 0:size:step]
        total = corners + np.roll(corners, -1, axis=0)
        total = total + np.roll(total, -1, axis=1)
        heights[half:size:step, half:size:step] = wibbled_mean(total)
        # diamonds: the edge midpoints from the two corners and the two neighbouring centres
        centres = heights[half:size:step, half:size:step]
        corners = heights[0:size:step, 0:size:step]
        total = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        heights[0:size:step, half:size:step] = wibbled_mean(total)
        total = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        heights[half:size:step, 0:size:step] = wibbled_mean(total)
        step //= 2
        wibble /= wibble_decay
    heights -= heights.min()
    return heights / heights.max()


def frost_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic frost layer, float (h, w, 3) in [0, 1]: our stand-in for the frost photographs of
    the original (which we do not have). Fractal haze (uneven ice film) plus thin bright strokes
    that branch like ice crystals, slightly blurred, tinted bluish white as frost on glass looks."""
    size = 1 << int(np.ceil(np.log2(max(h, w, 2))))
    haze = plasma_fractal(size, 2.0, rng)[:h, :w]
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    side = min(h, w)
    for _ in range(int(rng.integers(6, 12))):  # crystals: a trunk and a few side branches each
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, 2 * np.pi)
        length = rng.uniform(0.3, 0.8) * side
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        draw.line([(x0, y0), (x1, y1)], fill=int(rng.integers(170, 256)), width=1)
        for t in rng.uniform(0.2, 0.9, int(rng.integers(2, 5))):
            bx, by = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
            branch = angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
            blen = rng.uniform(0.1, 0.3) * side
            draw.line([(bx, by), (bx + blen * np.cos(branch), by + blen * np.sin(branch))],
                      fill=int(rng.integers(120, 220)), width=1)
    strokes = _gaussian(np.asarray(canvas, dtype=np.float64) / 255.0, 0.5 * side / 32)  # soften 1-px lines
    layer = np.clip(0.25 + 0.55 * haze + 0.9 * strokes, 0.0, 1.0)
    return layer[..., None] * np.array([0.86, 0.93, 1.0])


# ---------------------------------------------------------------------------------------------
# The 15 corruptions: (uint8 (H, W, 3), severity, rng) -> uint8 (H, W, 3)
# ---------------------------------------------------------------------------------------------

def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    x = image / 255.0
    return _to_uint8(x + rng.normal(0.0, PARAMS["gaussian_noise"][severity - 1], x.shape))


def shot_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    c = PARAMS["shot_noise"][severity - 1]
    return _to_uint8(rng.poisson(image / 255.0 * c) / c)


def impulse_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper per colour value (scikit-image ``random_noise(mode="s&p")``): each value is
    hit with probability ``amount``, and a hit is salt (1) or pepper (0) with equal odds."""
    amount = PARAMS["impulse_noise"][severity - 1]
    x = image / 255.0
    hit = rng.random(x.shape) <= amount
    salt = rng.random(x.shape) <= 0.5
    x = np.where(hit & salt, 1.0, np.where(hit & ~salt, 0.0, x))
    return _to_uint8(x)


def defocus_blur(image: np.ndarray, severity: int, rng: np.random.Generator | None = None) -> np.ndarray:
    radius, alias = PARAMS["defocus_blur"][severity - 1]
    kernel = _disk(radius * _scale(image), alias)
    return _to_uint8(ndimage.correlate(image / 255.0, kernel[:, :, None], mode="mirror"))


def glass_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blur, replace each pixel by a random up-left neighbour (sweeping from the bottom-right), blur."""
    sigma, delta, iterations = PARAMS["glass_blur"][severity - 1]
    scale = _scale(image)
    sigma, delta = sigma * scale, max(1, int(round(delta * scale)))
    h, w = image.shape[:2]
    x = (np.clip(_gaussian(image / 255.0, sigma), 0, 1) * 255).astype(np.uint8)
    # The sweep of the published generator: rows and columns from the far edge down to delta + 1,
    # offsets drawn from [-delta, delta) (numpy randint's open upper end). Its "swap"
    # ``x[h, w], x[h2, w2] = x[h2, w2], x[h, w]`` acts on numpy views, so it copies the neighbour
    # onto the pixel and leaves the neighbour as it was; CIFAR-10-C holds that, and we reproduce it.
    # (A true swap would drag a pixel across the image: the sweep would meet it again and again.)
    # With CIFAR's delta = 1 the offsets are -1 or 0, so every neighbour read is still unvisited in its
    # pass and a pass is one gather (at bigger sizes, delta > 1, a pass reads the values before it).
    rows, cols = np.meshgrid(np.arange(h - delta, delta, -1), np.arange(w - delta, delta, -1), indexing="ij")
    places = (rows * w + cols).ravel()
    order = np.arange(h * w)  # which source pixel each place shows
    for _ in range(iterations):
        dr, dc = rng.integers(-delta, delta, size=(2, places.size))
        source = order.copy()
        source[places] = order[places + dr * w + dc]
        order = source
    x = x.reshape(h * w, 3)[order].reshape(h, w, 3)
    return _to_uint8(_gaussian(x / 255.0, sigma))


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = PARAMS["motion_blur"][severity - 1]
    scale = _scale(image)
    blurred = _motion_blur(image.astype(np.float64), radius * scale, sigma * scale, rng.uniform(-45, 45))
    # ImageMagick writes 8-bit pixels rounded to nearest
    return np.clip(np.rint(blurred), 0, 255).astype(np.uint8)


def zoom_blur(image: np.ndarray, severity: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """The mean of the image and its centre zooms by each factor (a zoom-in during the exposure)."""
    factors = PARAMS["zoom_blur"][severity - 1]
    x = (image / 255.0).astype(np.float32)
    total = x.copy()
    for factor in factors:
        total += _clipped_zoom(x, 1 + (factor - 1) * _scale(image))
    return _to_uint8(total / (len(factors) + 1))


def snow(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Flakes: thresholded zoomed Gaussian noise, motion-blurred (falling), added twice (the second
    copy rotated 180 degrees) onto the image, which is first whitened towards 1.5 * grey + 0.5."""
    loc, spread, zoom, threshold, radius, sigma, blend = PARAMS["snow"][severity - 1]
    scale = _scale(image)
    x = image / 255.0
    h, w = x.shape[:2]
    layer = rng.normal(loc, spread, (h, w))
    layer = _clipped_zoom(layer, zoom)
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)  # an 8-bit grey image, as in the original
    layer = np.clip(np.rint(_motion_blur(layer.astype(np.float64), radius * scale, sigma * scale,
                                         rng.uniform(-135, -45))), 0, 255) / 255.0
    layer = layer[..., None]
    grey = (x @ np.array([0.299, 0.587, 0.114]))[..., None]  # OpenCV's RGB2GRAY weights
    x = blend * x + (1 - blend) * np.maximum(x, grey * 1.5 + 0.5)
    return _to_uint8(x + layer + np.rot90(layer, k=2))


def frost(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """``a * image + b * frost`` with a synthetic frost texture (see :func:`frost_texture`)."""
    a, b = PARAMS["frost"][severity - 1]
    texture = frost_texture(image.shape[0], image.shape[1], rng)
    return _to_uint8(a * (image / 255.0) + b * texture)


def fog(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a diamond-square fractal haze, then rescale so the brightest clean value stays in range."""
    strength, decay = PARAMS["fog"][severity - 1]
    x = image / 255.0
    h, w = x.shape[:2]
    size = 1 << int(np.ceil(np.log2(max(h, w, 2))))
    max_val = x.max()
    x = x + strength * plasma_fractal(size, decay, rng)[:h, :w, None]
    return _to_uint8(x * max_val / (max_val + strength))


def brightness(image: np.ndarray, severity: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Add ``c`` to the HSV value (V = max(R, G, B)), clipped at 1, hue and saturation kept.

    With H and S fixed, RGB is proportional to V, so the HSV round trip is a per-pixel scaling by
    V'/V; a black pixel (V = 0, hence S = 0) becomes grey V'.
    """
    c = PARAMS["brightness"][severity - 1]
    x = image / 255.0
    v = x.max(axis=-1, keepdims=True)
    v_new = np.minimum(v + c, 1.0)
    scaled = x * (v_new / np.where(v > 0, v, 1.0))
    return _to_uint8(np.where(v > 0, scaled, v_new))


def contrast(image: np.ndarray, severity: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Pull every value towards its channel's mean over the image by the factor ``c``."""
    c = PARAMS["contrast"][severity - 1]
    x = image / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * c + means)


def elastic_transform(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A random affine warp (three points jittered), then a smooth random displacement field."""
    alpha, sigma, jitter = (p * min(image.shape[:2]) for p in PARAMS["elastic_transform"][severity - 1])
    x = image.astype(np.float32) / 255.0
    h, w = x.shape[:2]
    cx, cy, half = w // 2, h // 2, min(h, w) // 3
    src = np.float32([[cx + half, cy + half], [cx + half, cy - half], [cx - half, cy - half]])  # (x, y) points
    dst = src + rng.uniform(-jitter, jitter, size=src.shape).astype(np.float32)
    # Affine A (2x3) with A @ [x, y, 1] = dst, as cv2.getAffineTransform; warpAffine samples the
    # source at A^-1 of each output point, bilinear, reflect-101 border (scipy "mirror").
    forward = np.linalg.solve(np.c_[src, np.ones(3)], dst).T  # (2, 3): [x', y'] = forward @ [x, y, 1]
    inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))[:2]
    # scipy works in (row, col) = (y, x): swap both the inputs and the outputs of the map
    matrix = inverse[::-1, :2][:, ::-1]
    offset = inverse[::-1, 2]
    warped = np.stack([ndimage.affine_transform(x[..., ch], matrix, offset, order=1, mode="mirror")
                       for ch in range(x.shape[2])], axis=-1)
    dx = (_gaussian(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (_gaussian(rng.uniform(-1, 1, (h, w)), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.stack([ndimage.map_coordinates(warped[..., ch], [rows + dy, cols + dx], order=1, mode="reflect")
                    for ch in range(x.shape[2])], axis=-1)
    return _to_uint8(out)


def pixelate(image: np.ndarray, severity: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Box-filter down to ``c`` of the size and back up (PIL ``BOX``)."""
    c = PARAMS["pixelate"][severity - 1]
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((int(w * c), int(h * c)), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX))


def jpeg_compression(image: np.ndarray, severity: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A JPEG round trip at quality ``c`` through PIL (its default 4:2:0 chroma subsampling)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=PARAMS["jpeg_compression"][severity - 1])
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


FUNCTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    name: globals()[name] for name in CORRUPTIONS
}


def corrupt(image: np.ndarray, name: str, severity: int, *, index: int = 0, seed: int = 0) -> np.ndarray:
    """One uint8 (H, W, 3) image corrupted by ``name`` at ``severity`` (1-5), seeded by (seed, index)."""
    if name not in FUNCTIONS:
        raise ConfigError(f"unknown corruption {name!r}; valid names: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ConfigError(f"severity {severity}: must be 1 to 5")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got shape {image.shape}")
    out = FUNCTIONS[name](image, severity, image_rng(seed, index, name, severity))
    return np.ascontiguousarray(out, dtype=np.uint8)


def corrupt_batch(images: np.ndarray, name: str, severity: int, *, indices=None, seed: int = 0) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, H, W, 3); image i is seeded by ``indices[i]`` (default i), so
    the result for an image does not depend on which batch it is in.

    The cheap deterministic corruptions (contrast, brightness) run on the whole batch at once; the
    others run image by image, each on its own random stream.
    """
    images = np.asarray(images, dtype=np.uint8)
    indices = range(len(images)) if indices is None else indices
    if name in ("contrast", "brightness"):  # no randomness, pure array maths: one call for all
        corrupt(images[0], name, severity)  # validates name and severity
        if name == "contrast":  # the same formula with each image's own channel means
            c = PARAMS["contrast"][severity - 1]
            x = images / 255.0
            means = x.mean(axis=(1, 2), keepdims=True)
            return _to_uint8((x - means) * c + means)
        return brightness(images, severity)  # per pixel: any leading shape
    return np.stack([corrupt(image, name, severity, index=int(i), seed=seed) for image, i in zip(images, indices)])
