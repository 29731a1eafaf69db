"""Poster images to vectors: EfficientNet-Lite0 pooled features plus a few OpenCV colour/edge descriptors.

The vector is the L2-normalised 1280-d EfficientNet-Lite0 embedding (what the poster shows) followed by
`DESCRIPTOR_DIM` hand-made descriptors (how it looks: palette, brightness, colourfulness, busyness);
see `opencv_descriptors` for their layout. `embed_frames` gives the video extractor the same embedding
for decoded frames.

Image bytes come from the outside world, so the format is recognised by content (magic bytes, never
the file's extension), only formats whose header this module reads are decoded (JPEG, PNG, GIF, BMP,
WebP: `ACCEPTED_FORMATS`), and nothing is decoded before its header says the pixel count is within
`MAX_IMAGE_PIXELS` (a decompression bomb is a small file that decodes to gigabytes). Other formats
OpenCV would decode (TIFF, PNM, JPEG 2000, OpenEXR, ...) are refused as "unsupported image format",
anything else as "undecodable image". Nothing raises for one bad file: it becomes a failed
`Extraction` with a fixed phrase. In the pipeline the decoding runs in a sandboxed child process
(`jobs.decode_sandbox`), started with OpenCV's own limit in its environment before cv2 loads.
Never imports pyspark; weights load only from site-packages (`features.models`).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence

import numpy as np

from features import models
from features.base import Extraction, Extractor, expect_array, in_input_order

log = logging.getLogger("modalrank.image")

MAX_IMAGE_PIXELS = 40_000_000

# Second line of defence, for a header that lies: OpenCV refuses to allocate more pixels than this. It is
# read when cv2 loads, so it must be set before the import below (setdefault leaves an operator's own
# limit alone); a process that imported cv2 earlier keeps OpenCV's default, which is why the pipeline
# decodes in a child process whose environment carries the limit from its start (jobs.decode_sandbox).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))

import cv2  # noqa: E402

EMPTY_FILE = "empty file"
TOO_LARGE = "image too large"
UNDECODABLE = "undecodable image"
NOT_BYTES = "not image bytes"
UNSUPPORTED = "unsupported image format"

EMBEDDING_DIM = 1280

# Descriptor layout (see opencv_descriptors).
HUE_BINS, SAT_BINS, VAL_BINS = 8, 4, 4
HISTOGRAM_DIM = HUE_BINS * SAT_BINS * VAL_BINS
BRIGHTNESS = HISTOGRAM_DIM
COLOURFULNESS = HISTOGRAM_DIM + 1
EDGE_DENSITY = HISTOGRAM_DIM + 2
DESCRIPTOR_DIM = HISTOGRAM_DIM + 3

# Descriptors are computed on the image shrunk to this longest side: edge density would otherwise
# depend on resolution (a 4000-px scan of a poster has thinner edges than a 300-px thumbnail of it).
DESCRIPTOR_SIDE = 256
# Hasler & Süsstrunk's metric is about 0 for grey images, 59 "quite colourful", 109+ "extremely
# colourful"; dividing by 150 puts ordinary images in 0..1 (a few saturated ones a little above).
COLOURFULNESS_SCALE = 150.0
CANNY_LOW, CANNY_HIGH = 100, 200


class ImageDecodeError(ValueError):
    """Raised by `decode_image`; `reason` is one of the fixed phrases quarantine rows group by."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------------------------------
# Headers: the size an image will decode to, read without decoding it


# Formats decoded, each with a header parser below, so every one of them gets the pixel check.
ACCEPTED_FORMATS = ("jpeg", "png", "gif", "bmp", "webp")
# Formats OpenCV would decode but whose size is not read here: refused by name rather than decoded.
_OTHER_IMAGE_MAGIC = (
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x00\x0cjP  ", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
    (b"\x76\x2f\x31\x01", "openexr"),
    (b"#?RADIANCE", "hdr"),
    (b"#?RGBE", "hdr"),
    (b"\x59\xa6\x6a\x95", "sunraster"),
)


def image_format(data: bytes) -> str | None:
    """The image format the bytes are, by their magic number: one of `ACCEPTED_FORMATS`, another
    image format's name (TIFF, PNM, AVIF, ...), or None for bytes that are no image format known here."""
    data = bytes(data[:32])
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, name in _OTHER_IMAGE_MAGIC:
        if data.startswith(magic):
            return name
    if data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis", b"heic", b"heix", b"mif1"):
        return "avif/heif"
    if len(data) > 2 and data[0:1] == b"P" and data[1:2] in b"1234567fF" and data[2:3].isspace():
        return "pnm"
    return None


def image_size_from_header(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG, PNG, GIF, BMP or WebP header, or None when the format is another
    one or the header is malformed (the decoder then decides, under OpenCV's own pixel limit)."""
    data = bytes(data)
    try:
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return width, height
        if data.startswith(b"BM"):
            return _bmp_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
    except struct.error:  # header cut short
        return None
    return None


# Start-of-frame markers carry the frame size: C0..CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RST0..7, SOI, EOI.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xDA)])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position < len(data):
        if data[position] != 0xFF:
            return None
        while position < len(data) and data[position] == 0xFF:  # fill bytes may precede a marker
            position += 1
        if position >= len(data):
            return None
        marker = data[position]
        position += 1
        if marker in _JPEG_STANDALONE:
            continue
        (length,) = struct.unpack(">H", data[position : position + 2])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[position + 3 : position + 7])
            # Height 0 defers the size to a DNL marker after the first scan: unknown here.
            return (width, height) if height else None
        if marker == 0xDA or length < 2:  # scan data before any frame header: malformed
            return None
        position += length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
    else:
        width, height = struct.unpack("<ii", data[18:26])
    return abs(width), abs(height)  # negative height: rows stored top-down


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a keyframe header, start code 9D 01 2A, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2F, then width-1 and height-1 in 14 bits each
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: canvas width-1 and height-1 in 24 bits each
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


# ---------------------------------------------------------------------------------------------------
# Decoding


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A BGR uint8 image from encoded bytes (grey and alpha are converted; EXIF rotation applied).

    Raises `ImageDecodeError` with reason "empty file", "unsupported image format" (an image format
    outside `ACCEPTED_FORMATS`), "image too large" (header over `max_pixels`, checked before any
    decoding) or "undecodable image" (corrupt, truncated or not an image).
    """
    if not data:
        raise ImageDecodeError(EMPTY_FILE)
    data = bytes(data)
    kind = image_format(data)
    if kind is None:
        raise ImageDecodeError(UNDECODABLE)
    if kind not in ACCEPTED_FORMATS:
        raise ImageDecodeError(UNSUPPORTED)
    size = image_size_from_header(data)
    if size is None:  # an accepted format whose header does not say its size: malformed, never decoded
        raise ImageDecodeError(UNDECODABLE)
    if size[0] * size[1] > max_pixels:
        raise ImageDecodeError(TOO_LARGE)
    if data.startswith(b"\xff\xd8") and not _jpeg_complete(data):
        raise ImageDecodeError(UNDECODABLE)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as error:
        # OpenCV raises (rather than returning None) when its own pixel limit trips, and when an allocation
        # fails (a process under a memory limit): that one is the caller's to handle, not a bad image.
        if "Insufficient memory" in str(error) or "Failed to allocate" in str(error):
            raise MemoryError(str(error)) from None
        raise ImageDecodeError(TOO_LARGE if "MAX_IMAGE_PIXELS" in str(error) else UNDECODABLE) from None
    if image is None or image.size == 0:
        raise ImageDecodeError(UNDECODABLE)
    return image


def _jpeg_complete(data: bytes) -> bool:
    """Whether a JPEG ends with its EOI marker (FFD9), give or take trailing padding.

    libjpeg decodes a truncated file by filling the missing rows with grey and only warning (OpenCV
    5.0's build happens to reject the ones we tried, older builds do not): a half-grey poster would be
    embedded as if it were fine, so a cut-off file is refused whatever the decoder does with it.
    """
    return data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")


# ---------------------------------------------------------------------------------------------------
# Hand-made descriptors


def opencv_descriptors(image_bgr: np.ndarray) -> np.ndarray:
    """`DESCRIPTOR_DIM` (131) float32 descriptors of a uint8 image (BGR, BGRA or grey).

    Layout:
    - [0:128] HSV colour histogram, 8 hue x 4 saturation x 4 value bins, summing to 1; the pixel
      with hue bin h, saturation bin s and value bin v counts at index h*16 + s*4 + v. Hue bins are
      45 degrees wide and centred on 0, 45, 90, ... degrees, so hue bin 0 is red from both sides of
      the hue circle (0..22 and 338..360 degrees); saturation and value bins are 64 levels wide. Grey
      pixels have hue 0: they land in hue bin 0 with saturation bin 0.
    - [128] mean brightness: mean of V (= max(R, G, B)) / 255, 0 for black, 1 for white.
    - [129] colourfulness: Hasler & Süsstrunk (2003) metric / 150, 0 for any grey image.
    - [130] edge density: share of pixels on Canny edges (thresholds 100/200), 0 for a flat image.
    All are computed on the image shrunk to at most 256 px on its longest side.
    """
    image = _as_bgr(image_bgr)
    height, width = image.shape[:2]
    if max(height, width) > DESCRIPTOR_SIDE:
        scale = DESCRIPTOR_SIDE / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)  # 8-bit: H in 0..179 (2-degree steps), S and V in 0..255
    hue = hsv[..., 0].astype(np.int32)
    # Shift by half a bin (4H + 45 in quarter-degrees, modulo 720) so red does not straddle bins 0 and 7.
    hue_bin = ((4 * hue + 45) % 720) // (720 // HUE_BINS)
    sat_bin = hsv[..., 1].astype(np.int32) * SAT_BINS // 256
    val_bin = hsv[..., 2].astype(np.int32) * VAL_BINS // 256
    index = (hue_bin * SAT_BINS + sat_bin) * VAL_BINS + val_bin
    histogram = np.bincount(index.ravel(), minlength=HISTOGRAM_DIM).astype(np.float64)
    histogram /= histogram.sum()

    brightness = float(hsv[..., 2].mean()) / 255.0

    blue, green, red = (image[..., c].astype(np.float64) for c in range(3))
    rg = red - green
    yb = 0.5 * (red + green) - blue
    colourfulness = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())

    edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), CANNY_LOW, CANNY_HIGH)
    edge_density = float(np.count_nonzero(edges)) / edges.size

    out = np.empty(DESCRIPTOR_DIM, dtype=np.float32)
    out[:HISTOGRAM_DIM] = histogram
    out[BRIGHTNESS] = brightness
    out[COLOURFULNESS] = colourfulness / COLOURFULNESS_SCALE
    out[EDGE_DENSITY] = edge_density
    return out


def _as_bgr(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"expected a grey, BGR or BGRA image, got shape {image.shape}")


# ---------------------------------------------------------------------------------------------------
# Embeddings


def embed_frames(frames_bgr: list[np.ndarray], device: str) -> np.ndarray:
    """(n, 1280) float32 EfficientNet-Lite0 embeddings of BGR uint8 frames, each row of unit length."""
    embeddings = models.efficientnet_embed([_as_bgr(frame) for frame in frames_bgr], device)
    return _normalise_rows(embeddings)


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def _model_sized(image: np.ndarray) -> np.ndarray:
    """The image resized to EfficientNet's input exactly as `models.efficientnet_input` would resize it.

    Done right after decoding so a batch holds 224x224 copies rather than full-size posters; the
    model's own resize then sees its target size and only copies (tests check the embedding is equal).
    """
    side = models.EFFICIENTNET_LITE0_SIZE
    shrinking = image.shape[0] > side or image.shape[1] > side
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


# What `ImageExtractor.decode` hands the model half: (model-sized image, descriptors, meta).
DecodedImage = tuple[np.ndarray, np.ndarray, dict[str, float]]


class ImageExtractor(Extractor[DecodedImage]):
    """EfficientNet-Lite0 embedding (unit length, [0:1280]) + OpenCV descriptors ([1280:1411]).

    Inputs are encoded image bytes (JPEG, PNG, WebP, GIF, BMP, or anything else OpenCV reads). Meta
    per result: `width` and `height` of the decoded image.
    """

    modality = "image"
    name = "efficientnet-lite0+opencv"
    version = "2"  # 2: every pass a full batch (1 let the batch size change the rounding, by ~1e-6)
    dim = EMBEDDING_DIM + DESCRIPTOR_DIM

    def __init__(
        self, device: str | None = None, batch_size: int = 32, max_pixels: int = MAX_IMAGE_PIXELS
    ) -> None:
        super().__init__()
        self.device = device or models.default_device()
        self.batch_size = max(1, int(batch_size))
        self.max_pixels = int(max_pixels)
        opencv_limit = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))
        if self.max_pixels > opencv_limit:
            log.warning(
                "max_pixels=%d is above OPENCV_IO_MAX_IMAGE_PIXELS=%d: OpenCV will still refuse larger images "
                "(set the variable before features.image is first imported)",
                self.max_pixels,
                opencv_limit,
            )

    def warm_up(self) -> None:
        """Load the weights now rather than on the first batch."""
        models.load_efficientnet_lite0(self.device)

    def extract_batch(self, inputs: Sequence[bytes | str]) -> list[Extraction]:
        return self.decode_then_extract(inputs)

    def decode(self, data: object) -> DecodedImage | Extraction:
        """(model-sized image, descriptors, meta) for one input, or its failed result: all the work on
        untrusted bytes, none on the model, so it can run in a sandboxed process."""
        if not isinstance(data, bytes | bytearray | memoryview):
            return Extraction.failed(NOT_BYTES)
        try:
            image = decode_image(bytes(data), self.max_pixels)
            descriptors = opencv_descriptors(image)
        except ImageDecodeError as error:
            return Extraction.failed(error.reason)
        except cv2.error:
            log.warning("OpenCV failed on a decoded image", exc_info=True)
            return Extraction.failed(UNDECODABLE)
        meta = {"width": float(image.shape[1]), "height": float(image.shape[0])}
        return _model_sized(image), descriptors, meta

    def decoded_to_arrays(self, decoded: DecodedImage) -> tuple[dict[str, object], list[np.ndarray]]:
        image, descriptors, meta = decoded
        return {"meta": meta}, [image, descriptors]

    def decoded_from_arrays(self, fields: dict[str, object], arrays: list[np.ndarray]) -> DecodedImage:
        image, descriptors = arrays
        expect_array(image, np.uint8, 3, "decoded image")
        expect_array(descriptors, np.float32, 1, "image descriptors")
        if image.shape[2] != 3 or descriptors.shape != (DESCRIPTOR_DIM,):
            raise ValueError(f"decoded image {image.shape} with descriptors {descriptors.shape}")
        meta = fields["meta"]
        if not isinstance(meta, dict):
            raise ValueError("image meta is not a mapping")
        return image, descriptors, {str(key): float(value) for key, value in meta.items()}

    def extract_decoded(self, decoded: Sequence[DecodedImage]) -> list[Extraction]:
        results: dict[int, Extraction] = {}
        # Images wait for the model in chunks of batch_size, already at model size, to bound memory.
        for start in range(0, len(decoded), self.batch_size):
            pending = [
                (start + i, *prepared) for i, prepared in enumerate(decoded[start : start + self.batch_size])
            ]
            self._embed(pending, results)
        return in_input_order(results, len(decoded))

    def _embed(self, pending: list, results: dict[int, Extraction]) -> None:
        # Every forward pass is a full batch: a short one is padded with blank images, dropped after.
        # The CPU kernels round differently at each batch size (up to ~3e-6 here), so without this a
        # poster's vector would depend on how many others shared its batch: on the partitioning, on
        # which items failed to decode, and on whether the run was incremental or full.
        images = [image for _, image, _, _ in pending]
        blank = np.zeros_like(images[0])
        images += [blank] * (self.batch_size - len(images))
        embeddings = _normalise_rows(models.efficientnet_embed(images, self.device, self.batch_size))[
            : len(pending)
        ]
        self.inferences += len(pending)
        for (index, _, descriptors, meta), embedding in zip(pending, embeddings, strict=True):
            results[index] = self._vector(np.concatenate([embedding, descriptors]), meta)
