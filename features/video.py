"""Trailer video to a fixed-length vector: what it looks like (EfficientNet-Lite0 frame embeddings), how much
it moves (Farneback optical flow), how often it cuts (HSV histogram jumps), and how long and fast it is.

What it is for: items whose trailers share a look and a pace end up close, without a video model: the
appearance comes from the same image model as posters (`features.image.embed_frames`), the rest is plain
OpenCV signal processing.

What it must never do: raise for one bad file (empty, corrupt, truncated or frameless clips come back as
a failed `Extraction` with a fixed phrase), decode more than `max_seconds` (600) of a clip or more than
`max_decoded_frames` (36,000) frames, decode a stream whose header promises more than
`max_pixels_per_second` (500 M: 4K at 60 fps) of work per second of clip, leave its
temporary file behind, or let one clip's result depend on the other clips of its batch (each clip's
frames are embedded in their own model batch, so same bytes give the same vector). Nothing here imports
pyspark.

How a clip is read: OpenCV's FFmpeg backend needs a path, so the bytes go to a temporary file that is
deleted as soon as the clip is read. Every frame is decoded once, in order (no seeking, so what is read
does not depend on keyframe placement). When the container reports a frame count, `n = clamp(round(
duration * sample_fps), 1, max_frames)` frames are picked at the centres of n equal spans of the clip;
when it does not, a first pass counts the frames. A container that over-reports its count still gives at
least one sampled frame (the last one decoded).

- Appearance: `embed_frames` (unit-length 1280-d rows) of the sampled frames, mean-pooled and max-pooled
  (the mean is not re-normalised).
- Motion: dense Farneback flow between each sampled frame and the frame right after it in the stream
  (not the next *sampled* frame: those are up to seconds apart, across shots, so flow between them is
  mostly noise), on gray frames shrunk to at most ANALYSIS_WIDTH (160) px wide. Per-pixel magnitudes of
  all pairs are pooled; each is in frame diagonals per second (pixels / analysis-frame diagonal * fps), so
  neither resolution nor frame rate changes it. A pair that straddles a cut is skipped (flow across a cut
  is meaningless); a one-frame clip has motion 0.
- Cuts: on EVERY decoded frame (shrunk to ANALYSIS_WIDTH, so it stays cheap), the Bhattacharyya distance
  between consecutive frames' HSV histograms (16 hue x 4 saturation x 8 value bins, soft-binned: each bin
  spreads a quarter into each neighbour, hue wrapping round; L1-normalised); a distance above
  CUT_THRESHOLD (0.18) is a cut. Soft binning is what keeps a slow fade from counting: without it, an
  area of flat colour sitting on a bin edge jumps bins all at once. Over the 600-item demo, within-shot
  distances stay below 0.08 (a sprite moving 7 px a frame included) and every hard cut is above 0.26.
  The last step of a fade to black does count as a cut (near black, hue and saturation collapse). The
  rate is cuts per second of analysed video.

Vector layout (`VideoExtractor.dim` = 2567, float32):

    [0:1280]     mean of the sampled frames' unit-length EfficientNet-Lite0 embeddings
    [1280:2560]  element-wise max of the same
    [2560]       motion magnitude mean   (frame diagonals per second)
    [2561]       motion magnitude std
    [2562]       motion magnitude 90th percentile
    [2563]       motion magnitude max
    [2564]       cut rate (cuts per second)
    [2565]       duration / 60 (minutes): frames that decoded / fps (the container's count past MAX_SECONDS)
    [2566]       fps / 60

Meta per result: `frames_sampled`, `frames_decoded`, `duration` (seconds), `fps`, `cuts`.

Failure phrases: EMPTY "empty file" (no bytes or None), UNDECODABLE "undecodable video" (OpenCV cannot
open it: random bytes, an MP4 whose moov atom was cut off, not bytes at all), NO_FRAMES "video has no
frames" (it opens but not one frame decodes), TOO_LARGE "video frames too large" (the container's frame
size is over `max_pixels`, checked before decoding), TOO_DEMANDING "video decode rate too high" (frame size x
frame rate over `max_pixels_per_second`, checked before decoding), FEATURE_ERROR "video feature error" (OpenCV failed on
decoded frames: a bug or an input nobody foresaw; logged with its traceback).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from features import models
from features.base import Extraction, Extractor, expect_array

log = logging.getLogger("modalrank.video")

EMPTY = "empty file"
UNDECODABLE = "undecodable video"
NO_FRAMES = "video has no frames"
FEATURE_ERROR = "video feature error"
TOO_LARGE = "video frames too large"
TOO_DEMANDING = "video decode rate too high"

EMBEDDING_DIM = 1280
MEAN_POOL = slice(0, EMBEDDING_DIM)
MAX_POOL = slice(EMBEDDING_DIM, 2 * EMBEDDING_DIM)
MOTION_MEAN, MOTION_STD, MOTION_P90, MOTION_MAX = 2560, 2561, 2562, 2563
CUT_RATE = 2564
DURATION = 2565
FPS = 2566
DIM = 2567

ANALYSIS_WIDTH = 160
HIST_BINS = (16, 4, 8)  # hue, saturation, value
HIST_RANGES = (0, 180, 0, 256, 0, 256)
CUT_THRESHOLD = 0.18
DURATION_SCALE = 60.0
FPS_SCALE = 60.0
# Containers without a usable rate (a still image opened as video) get FFmpeg's own default.
FALLBACK_FPS = 25.0
MAX_FPS = 1000.0
MAX_SECONDS = 600.0
# What one clip's decode may cost at most, whatever its header says: frames (600 s at 60 fps) and pixels
# per second of clip (4K at 60 fps). With MAX_FRAME_PIXELS this bounds a clip's decoding work; a rate the
# container invents (1000 fps) cannot make it decode more than MAX_DECODED_FRAMES.
MAX_DECODED_FRAMES = 36_000
MAX_PIXELS_PER_SECOND = 500_000_000
# Sampled frames are kept for the embedder, which shrinks them to 224 px anyway: cap what a 4K clip holds.
MAX_FRAME_SIDE = 960
# Frames bigger than this (8K UHD is 33 M pixels) are refused before decoding: one such frame is 120 MB+.
MAX_FRAME_PIXELS = 40_000_000
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)


@dataclass
class ScannedVideo:
    """What one pass over a clip keeps: the sampled frames and the motion, cut and timing statistics."""

    frames: list[np.ndarray] = field(default_factory=list)
    motion: np.ndarray = field(default_factory=lambda: np.zeros(4))
    cuts: int = 0
    decoded: int = 0
    fps: float = FALLBACK_FPS
    duration: float = 0.0


class VideoExtractor(Extractor[ScannedVideo]):
    """EfficientNet-Lite0 frame embeddings + motion, cut rate, duration and fps; layout in the module doc.

    `sample_fps` frames per second of clip are embedded, at most `max_frames`, spread evenly over it.
    """

    modality = "video"
    name = "effnet-lite0-frames+farneback"
    version = "1"
    dim = DIM

    def __init__(
        self,
        device: str | None = None,
        sample_fps: float = 2.0,
        max_frames: int = 16,
        max_pixels: int = MAX_FRAME_PIXELS,
        max_seconds: float = MAX_SECONDS,
        max_decoded_frames: int = MAX_DECODED_FRAMES,
        max_pixels_per_second: int = MAX_PIXELS_PER_SECOND,
    ) -> None:
        super().__init__()
        if not sample_fps > 0 or int(max_frames) < 1:
            raise ValueError(f"need sample_fps > 0 and max_frames >= 1, got {sample_fps} and {max_frames}")
        self.device = device or models.default_device()
        self.sample_fps = float(sample_fps)
        self.max_frames = int(max_frames)
        self.max_pixels = int(max_pixels)
        self.bounds = DecodeBounds(float(max_seconds), int(max_decoded_frames), int(max_pixels_per_second))

    def warm_up(self) -> None:
        """Load the image model now rather than inside the first batch."""
        from features.image import embed_frames

        embed_frames([np.zeros((64, 96, 3), np.uint8)], self.device)

    def extract_batch(self, inputs: Sequence[bytes | str]) -> list[Extraction]:
        return self.decode_then_extract(inputs)

    def decode(self, value: object) -> ScannedVideo | Extraction:
        """FFmpeg's and OpenCV's half (the risky one, on untrusted bytes): the clip read once into its
        sampled frames and statistics."""
        if value is None or (isinstance(value, bytes | bytearray | memoryview) and len(value) == 0):
            return Extraction.failed(EMPTY)
        if not isinstance(value, bytes | bytearray | memoryview):
            return Extraction.failed(UNDECODABLE)
        try:
            return read_video(bytes(value), self.sample_fps, self.max_frames, self.max_pixels, self.bounds)
        except Exception:
            log.exception("OpenCV failed on a video of %d bytes", len(value))
            return Extraction.failed(FEATURE_ERROR)

    def decoded_to_arrays(self, decoded: ScannedVideo) -> tuple[dict[str, object], list[np.ndarray]]:
        fields = {
            "motion": [float(value) for value in decoded.motion],
            "cuts": decoded.cuts,
            "decoded": decoded.decoded,
            "fps": decoded.fps,
            "duration": decoded.duration,
        }
        return fields, list(decoded.frames)

    def decoded_from_arrays(self, fields: dict[str, object], arrays: list[np.ndarray]) -> ScannedVideo:
        frames = [expect_array(frame, np.uint8, 3, "video frame") for frame in arrays]
        if not frames or len(frames) > self.max_frames or any(frame.shape[2] != 3 for frame in frames):
            raise ValueError(f"{len(frames)} video frames, expected 1 to {self.max_frames} BGR frames")
        motion = np.asarray(fields["motion"], dtype=np.float64)
        cuts, decoded = fields["cuts"], fields["decoded"]
        fps, duration = fields["fps"], fields["duration"]
        if motion.shape != (4,) or not (isinstance(cuts, int) and isinstance(decoded, int)):
            raise ValueError("scanned video: motion must be 4 numbers, cuts and decoded whole numbers")
        if not (isinstance(fps, int | float) and isinstance(duration, int | float) and 0 < fps <= MAX_FPS):
            raise ValueError(f"scanned video: fps {fps!r}, duration {duration!r}")
        return ScannedVideo(frames, motion, cuts, decoded, float(fps), float(duration))

    def extract_decoded(self, decoded: Sequence[ScannedVideo]) -> list[Extraction]:
        return [self._vector(self._features(scanned), self._meta(scanned)) for scanned in decoded]

    def _features(self, scanned: ScannedVideo) -> np.ndarray:
        from features.image import embed_frames

        # One model batch per clip: batching clips together would make a clip's float rounding depend on
        # its neighbours in the batch.
        embeddings = embed_frames(scanned.frames, self.device)
        self.inferences += 1
        vector = np.zeros(DIM, dtype=np.float64)
        vector[MEAN_POOL] = embeddings.mean(axis=0)
        vector[MAX_POOL] = embeddings.max(axis=0)
        vector[MOTION_MEAN : MOTION_MAX + 1] = scanned.motion
        analysed = scanned.decoded / scanned.fps
        vector[CUT_RATE] = scanned.cuts / analysed if analysed > 0 else 0.0
        vector[DURATION] = scanned.duration / DURATION_SCALE
        vector[FPS] = scanned.fps / FPS_SCALE
        return vector

    @staticmethod
    def _meta(scanned: ScannedVideo) -> dict[str, float]:
        return {
            "frames_sampled": float(len(scanned.frames)),
            "frames_decoded": float(scanned.decoded),
            "duration": scanned.duration,
            "fps": scanned.fps,
            "cuts": float(scanned.cuts),
        }


@dataclass(frozen=True)
class DecodeBounds:
    """How much of a clip is decoded at most: seconds, frames, and pixels per second of clip."""

    max_seconds: float = MAX_SECONDS
    max_decoded_frames: int = MAX_DECODED_FRAMES
    max_pixels_per_second: int = MAX_PIXELS_PER_SECOND


def read_video(
    data: bytes,
    sample_fps: float,
    max_frames: int,
    max_pixels: int = MAX_FRAME_PIXELS,
    bounds: DecodeBounds = DecodeBounds(),
) -> ScannedVideo | Extraction:
    """Decode the clip's bytes once: sampled frames plus motion and cut statistics, or a failure.

    A stream whose frame size (from the container, before any frame is decoded) is over `max_pixels`
    is refused as TOO_LARGE: FFmpeg has no pixel limit of its own; one whose frame size x frame rate is
    over `bounds.max_pixels_per_second` as TOO_DEMANDING. At most `bounds.max_seconds` of the clip, and
    never more than `bounds.max_decoded_frames` frames, are decoded."""
    with tempfile.NamedTemporaryFile(prefix="modalrank-video-", suffix=_container_suffix(data)) as handle:
        handle.write(data)
        handle.flush()
        capture = cv2.VideoCapture(handle.name, cv2.CAP_FFMPEG)
        try:
            if not capture.isOpened():
                return Extraction.failed(UNDECODABLE)
            width, height = capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
            if width * height > max_pixels:
                return Extraction.failed(TOO_LARGE)
            fps = capture.get(cv2.CAP_PROP_FPS)
            fps = fps if math.isfinite(fps) and 0 < fps <= MAX_FPS else FALLBACK_FPS
            if width * height * fps > bounds.max_pixels_per_second:
                return Extraction.failed(TOO_DEMANDING)
            max_decoded = max(1, min(math.ceil(bounds.max_seconds * fps), bounds.max_decoded_frames))
            reported = capture.get(cv2.CAP_PROP_FRAME_COUNT)
            # A count OpenCV could not read comes back as -1, 0 or INT64_MIN (a still image, a raw stream).
            if math.isfinite(reported) and reported >= 1:
                total = int(reported)
            else:
                total = _count_frames(handle.name, max_decoded)
            if total == 0:
                return Extraction.failed(NO_FRAMES)
            planned = min(total, max_decoded)
            samples = sample_indices(planned, fps, sample_fps, max_frames)
            scanned = _scan(capture, samples, max_decoded)
        finally:
            capture.release()
    if scanned.decoded == 0:
        return Extraction.failed(NO_FRAMES)
    scanned.fps = float(fps)
    scanned.motion = scanned.motion * fps  # diagonals per frame -> per second
    # Past the analysis cap the container's count is all there is; below it the frames that decoded are
    # the truth (a truncated or mis-indexed file reports more than it holds).
    frames = total if scanned.decoded >= max_decoded else scanned.decoded
    scanned.duration = frames / fps
    return scanned


def sample_indices(frame_count: int, fps: float, sample_fps: float, max_frames: int) -> list[int]:
    """Frame indices at the centres of n equal spans of the clip, n = clamp(round(seconds * sample_fps))."""
    wanted = round(frame_count / fps * sample_fps)
    n = max(1, min(max_frames, wanted, frame_count))
    return sorted({min(frame_count - 1, int((k + 0.5) * frame_count / n)) for k in range(n)})


def _scan(capture: cv2.VideoCapture, samples: list[int], max_decoded: int) -> ScannedVideo:
    scanned = ScannedVideo()
    wanted = set(samples)
    magnitudes: list[np.ndarray] = []
    previous_hist = previous_gray = last_frame = None
    # The gray of a sampled frame waiting for its successor, and the one before it (used when the
    # sample is the clip's last frame).
    waiting = waiting_before = None
    waiting_after_cut = False
    while scanned.decoded < max_decoded and capture.grab():
        ok, frame = capture.retrieve()
        if not ok or frame is None:
            break
        small = _analysis_frame(frame)
        hist = _hsv_hist(small)
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        is_cut = previous_hist is not None and (
            cv2.compareHist(previous_hist, hist, cv2.HISTCMP_BHATTACHARYYA) > CUT_THRESHOLD
        )
        scanned.cuts += int(is_cut)
        if waiting is not None:
            if not is_cut:
                magnitudes.append(_flow_magnitude(waiting, gray))
            waiting = None
        if scanned.decoded in wanted:
            scanned.frames.append(_bounded(frame))
            waiting, waiting_before, waiting_after_cut = gray, previous_gray, is_cut
        previous_hist, previous_gray, last_frame = hist, gray, frame
        scanned.decoded += 1
    if waiting is not None and waiting_before is not None and not waiting_after_cut:
        magnitudes.append(_flow_magnitude(waiting_before, waiting))
    if not scanned.frames and last_frame is not None:
        # The container promised more frames than it had: fall back to the last one that decoded.
        scanned.frames.append(_bounded(last_frame))
    if magnitudes:
        pooled = np.concatenate(magnitudes)
        scanned.motion = np.array([pooled.mean(), pooled.std(), np.percentile(pooled, 90), pooled.max()])
    return scanned


def _count_frames(path: str, limit: int) -> int:
    capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    try:
        count = 0
        while count < limit and capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def _analysis_frame(frame: np.ndarray) -> np.ndarray:
    frame = _as_bgr(frame)
    height, width = frame.shape[:2]
    if width <= ANALYSIS_WIDTH:
        return frame
    size = (ANALYSIS_WIDTH, max(1, round(height * ANALYSIS_WIDTH / width)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _bounded(frame: np.ndarray) -> np.ndarray:
    frame = _as_bgr(frame)
    height, width = frame.shape[:2]
    if max(height, width) <= MAX_FRAME_SIDE:
        return frame
    scale = MAX_FRAME_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _as_bgr(frame: np.ndarray) -> np.ndarray:
    # OpenCV's FFmpeg backend converts to BGR, but a gray stream can come back with one channel.
    if frame.ndim == 2 or frame.shape[2] == 1:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    return frame


def _hsv_hist(frame_bgr: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(HIST_BINS), list(HIST_RANGES))
    for axis in range(hist.ndim):
        hist = _soften(hist, axis, wrap=axis == 0)
    return (hist / max(float(hist.sum()), 1e-12)).astype(np.float32)


def _soften(hist: np.ndarray, axis: int, wrap: bool) -> np.ndarray:
    """A [1/4, 1/2, 1/4] blur along one axis: circular for hue, edge-repeating for saturation and value."""
    if wrap:
        before, after = np.roll(hist, 1, axis=axis), np.roll(hist, -1, axis=axis)
    else:
        size = hist.shape[axis]
        padded = np.pad(hist, [(1, 1) if a == axis else (0, 0) for a in range(hist.ndim)], mode="edge")
        before = np.take(padded, np.arange(size), axis=axis)
        after = np.take(padded, np.arange(2, size + 2), axis=axis)
    return 0.25 * before + 0.5 * hist + 0.25 * after


def _flow_magnitude(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per-pixel flow magnitudes in analysis-frame diagonals per frame (the caller's fps makes them per s)."""
    # OpenCV's stubs make the output array `flow` required; None (OpenCV allocates it) is what its API allows.
    flow = cv2.calcOpticalFlowFarneback(before, after, None, **FARNEBACK)  # type: ignore[call-overload]
    diagonal = math.hypot(before.shape[0], before.shape[1])
    return (np.hypot(flow[..., 0], flow[..., 1]) / diagonal).reshape(-1)


def _container_suffix(data: bytes) -> str:
    # FFmpeg probes the content, but the extension breaks ties; unknown bytes get ".mp4", so random data
    # meets the strict MP4 demuxer (which refuses it) rather than a lenient raw-stream guess.
    if data[4:8] == b"ftyp":
        return ".mp4"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return ".avi"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return ".mkv"
    if data[:4] == b"OggS":
        return ".ogv"
    return ".mp4"
