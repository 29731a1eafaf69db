"""The demo's synthetic media: each item's poster (JPEG), trailer audio (WAV) and trailer video (MP4).

Each medium is drawn from the item's cluster style (`demo_styles`) with its own random stream
(seed, medium, item_id), so changing one renderer never changes another medium's bytes.

- `posters/<id>.jpg`: POSTER_SIZE BGR JPEG, quality JPEG_QUALITY.
- `audio/<id>.wav`: mono 16-bit PCM at SAMPLE_RATE, peak amplitude AUDIO_PEAK.
- `video/<id>.mp4`: `round(video_seconds * video_fps)` frames of VIDEO_SIZE, fourcc VIDEO_FOURCC.

Video codec (opencv-python-headless 5.0.0): `cv2.VideoWriter.fourcc` and `cv2.VideoWriter_fourcc`
both exist. `mp4v` (MPEG-4 Part 2 via the bundled FFmpeg) works, reads back with
`cv2.VideoCapture` with the exact frame count, and is byte-deterministic across processes for the
same wheel. `avc1`/`H264` do NOT work in this wheel (only the hardware `h264_v4l2m2m` encoder is
present): the writer just reports `isOpened() == False`, so we check it and raise. The writer also
silently drops frames whose size or channel count differ from the declared ones (a warning on
stderr, no exception) and silently crops odd widths/heights to even ones, so frames are built at
exactly VIDEO_SIZE (even) as 3-channel uint8.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import soundfile

from infra.tools.demo_config import (
    STREAM_AUDIO,
    STREAM_POSTER,
    STREAM_VIDEO,
    CatalogItem,
    DemoDataConfig,
    stream_rng,
)
from infra.tools.demo_styles import CLUSTER_STYLES, ClusterStyle

# The generator's one logger, whichever of its parts logs.
log = logging.getLogger("modalrank.demo_data")

Colour = tuple[int, int, int]  # BGR, as cv2 draws

POSTER_SIZE = (120, 180)  # (width, height), cv2 order
VIDEO_SIZE = (96, 64)  # (width, height); both even, see the codec note above
VIDEO_FOURCC = "mp4v"
JPEG_QUALITY = 90
SAMPLE_RATE = 22_050
AUDIO_PEAK = 0.5
PROGRESS_EVERY = 100


def hsv_colour(hue: float, saturation: float, value: float) -> Colour:
    """A BGR colour from OpenCV-scale HSV (hue 0..179, wrapping; s and v clipped to 0..255)."""
    pixel = np.array(
        [[[round(hue) % 180, int(np.clip(saturation, 0, 255)), int(np.clip(value, 0, 255))]]],
        dtype=np.uint8,
    )
    b, g, r = cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def vertical_gradient(width: int, height: int, top: Colour, bottom: Colour) -> np.ndarray:
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    rows = (1.0 - ramp) * np.array(top, dtype=np.float64) + ramp * np.array(bottom, dtype=np.float64)
    return np.ascontiguousarray(np.broadcast_to(np.round(rows), (height, width, 3)).astype(np.uint8))


def _paint_circles(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(2, 5))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, int(height * 0.8))))
        cv2.circle(image, centre, int(rng.integers(10, 34)), colour, -1, cv2.LINE_AA)


def _paint_rings(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(2, 5))):
        centre = (int(rng.integers(10, width - 10)), int(rng.integers(10, int(height * 0.8))))
        radius = int(rng.integers(12, 40))
        cv2.circle(image, centre, radius, colour, int(rng.integers(3, 7)), cv2.LINE_AA)


def _paint_stripes(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    spacing = int(rng.integers(10, 16))
    thickness = int(rng.integers(3, 6))
    offset = int(rng.integers(0, spacing))
    slope = int(rng.integers(-20, 21))
    for y in range(offset, int(height * 0.8), spacing):
        cv2.line(image, (0, y), (width - 1, y + slope), colour, thickness, cv2.LINE_AA)


def _paint_triangles(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    base_y = int(height * 0.8)
    for _ in range(int(rng.integers(2, 5))):
        peak_x = int(rng.integers(0, width))
        half = int(rng.integers(20, 50))
        peak_y = int(rng.integers(int(height * 0.25), int(height * 0.6)))
        points = np.array([[peak_x - half, base_y], [peak_x, peak_y], [peak_x + half, base_y]], np.int32)
        cv2.fillPoly(image, [points], colour, cv2.LINE_AA)


def _paint_dots(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(30, 60))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, int(height * 0.8))))
        cv2.circle(image, centre, int(rng.integers(2, 6)), colour, -1, cv2.LINE_AA)


def _paint_zigzag(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(1, 3))):
        y = int(rng.integers(20, int(height * 0.7)))
        step = int(rng.integers(12, 22))
        amplitude = int(rng.integers(8, 18))
        xs = range(-step, width + step, step)
        points = np.array([[x, y + (amplitude if i % 2 else -amplitude)] for i, x in enumerate(xs)], np.int32)
        cv2.polylines(image, [points], False, colour, int(rng.integers(4, 8)), cv2.LINE_AA)


def _paint_cracks(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(2, 4))):
        steps = rng.normal(0.0, 9.0, size=(12, 2)) + np.array([0.0, 9.0])
        start = np.array([rng.integers(0, width), rng.integers(0, height // 4)], dtype=np.float64)
        points = np.round(start + np.cumsum(steps, axis=0)).astype(np.int32)
        cv2.polylines(image, [points], False, colour, int(rng.integers(1, 3)), cv2.LINE_AA)


def _paint_rectangles(image: np.ndarray, colour: Colour, rng: np.random.Generator) -> None:
    height, width = image.shape[:2]
    base_y = int(height * 0.8)
    x = int(rng.integers(-10, 5))
    while x < width:
        block_width = int(rng.integers(12, 30))
        top = int(rng.integers(int(height * 0.35), int(height * 0.7)))
        cv2.rectangle(image, (x, top), (x + block_width - 3, base_y), colour, -1)
        x += block_width


SHAPE_PAINTERS: dict[str, Callable[[np.ndarray, Colour, np.random.Generator], None]] = {
    "circles": _paint_circles,
    "rings": _paint_rings,
    "stripes": _paint_stripes,
    "triangles": _paint_triangles,
    "dots": _paint_dots,
    "zigzag": _paint_zigzag,
    "cracks": _paint_cracks,
    "rectangles": _paint_rectangles,
}


def draw_poster(style: ClusterStyle, rng: np.random.Generator) -> np.ndarray:
    """A POSTER_SIZE BGR uint8 image: cluster palette and shapes, jittered per item."""
    width, height = POSTER_SIZE
    hue = rng.uniform(*style.hue_range)
    saturation = style.saturation + rng.uniform(-20, 20)
    brightness = style.brightness + rng.uniform(-20, 20)
    top = hsv_colour(hue, saturation, brightness)
    bottom = hsv_colour(hue + rng.uniform(-4, 4), saturation, brightness * 0.55)
    poster = vertical_gradient(width, height, top, bottom)
    accent = hsv_colour(hue + style.accent_hue_shift + rng.uniform(-6, 6), 200, 235)
    SHAPE_PAINTERS[style.poster_shape](poster, accent, rng)
    # A dark title band with a light "title" bar, like a real one-sheet; the same for every cluster.
    band_top = int(height * 0.82)
    poster[band_top:] = (poster[band_top:] * 0.35).astype(np.uint8)
    bar_width = int(rng.integers(40, width - 20))
    cv2.rectangle(poster, (10, band_top + 10), (10 + bar_width, band_top + 17), (225, 225, 225), -1)
    return poster


def synth_trailer_audio(
    style: ClusterStyle, rng: np.random.Generator, seconds: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Mono float32 audio, peak AUDIO_PEAK: plucked notes at the cluster's tempo, pitch and timbre.

    The root note dominates (with an occasional, quieter fifth), so the strongest FFT bin sits at the
    cluster's base pitch; tempo shows up in onset strength, timbre in spectral shape and flatness.
    """
    sample_count = max(1, round(seconds * sample_rate))
    pitch = style.base_pitch * rng.uniform(0.97, 1.03)
    interval = 1.0 / (style.tempo * rng.uniform(0.9, 1.1))
    harmonic_numbers = np.arange(1, style.harmonics + 1)
    overtone_jitter = rng.uniform(0.7, 1.3, style.harmonics - 1)
    harmonic_gains = harmonic_numbers**-1.2 * np.concatenate([[1.0], overtone_jitter])
    harmonic_phases = rng.uniform(0, 2 * np.pi, style.harmonics)
    decay = 0.4 * interval
    audio = np.zeros(sample_count, dtype=np.float64)

    onset = rng.uniform(0.0, 0.25 * interval)
    note_number = 0
    while onset < seconds:
        start = int(onset * sample_rate)
        length = min(sample_count - start, int(interval * sample_rate) + 1)
        if length <= 0:
            break
        t = np.arange(length) / sample_rate
        # An occasional quieter fifth gives a melody; only on odd notes, so the root always sounds
        # at least as often and the strongest FFT bin stays on the cluster's pitch.
        is_fifth = note_number % 2 == 1 and rng.random() < 0.4
        frequency = pitch * (1.5 if is_fifth else 1.0)
        envelope = (0.4 if is_fifth else 1.0) * np.minimum(t / 0.005, 1.0) * np.exp(-t / decay)
        phases = 2 * np.pi * frequency * harmonic_numbers[:, None] * t[None, :] + harmonic_phases[:, None]
        tone = harmonic_gains @ np.sin(phases)
        hit = rng.standard_normal(length) * np.exp(-t / (decay / 3.0))
        audio[start : start + length] += envelope * tone + style.noise_mix * hit
        onset += interval * rng.uniform(0.97, 1.03)
        note_number += 1

    audio += 0.05 * style.noise_mix * rng.standard_normal(sample_count)
    peak = np.abs(audio).max()
    if peak > 0:
        audio *= AUDIO_PEAK / peak
    return audio.astype(np.float32)


def _bounce(position: float, low: float, high: float) -> float:
    span = high - low
    if span <= 0:
        return low
    phase = (position - low) % (2 * span)
    return low + (phase if phase <= span else 2 * span - phase)


def render_trailer_video(style: ClusterStyle, rng: np.random.Generator, frame_count: int) -> np.ndarray:
    """(frame_count, height, width, 3) BGR uint8 frames: cluster colours and motion level."""
    width, height = VIDEO_SIZE
    hue = rng.uniform(*style.hue_range)
    speed = {"static": 0.0, "slow": 1.0, "fast": 7.0, "cuts": 1.0}[style.motion] * rng.uniform(0.8, 1.2)
    scene_count = 3 if style.motion == "cuts" else 1
    scenes = []
    for scene in range(scene_count):
        # Cut scenes differ in light and a little in hue, but stay in the cluster's palette.
        scene_hue = hue + 8 * scene
        scene_brightness = style.brightness * (1.0, 0.55, 0.8)[scene]
        background = vertical_gradient(
            width,
            height,
            hsv_colour(scene_hue, style.saturation, scene_brightness),
            hsv_colour(scene_hue, style.saturation, scene_brightness * 0.5),
        )
        sprite_colour = hsv_colour(scene_hue + style.accent_hue_shift, 200, 235)
        start = (rng.uniform(0, width), rng.uniform(0, height))
        angle = rng.uniform(0, 2 * np.pi)
        scenes.append((background, sprite_colour, start, (np.cos(angle), np.sin(angle))))
    frames_per_scene = max(2, round(frame_count / rng.uniform(3.5, 5.0)))
    radius = int(rng.integers(7, 12))
    breathing_phase = rng.uniform(0, 2 * np.pi)

    frames = np.empty((frame_count, height, width, 3), dtype=np.uint8)
    for index in range(frame_count):
        background, sprite_colour, start, direction = scenes[(index // frames_per_scene) % scene_count]
        frame = background.copy()
        if style.motion == "static":
            # Near-static, not frozen: a slow light breathing, as in a held shot.
            shift = round(2 * np.sin(breathing_phase + index * 0.3))
            frame = cv2.add(frame, np.full_like(frame, max(shift, 0)))
        x = _bounce(start[0] + direction[0] * speed * index, radius, width - radius)
        y = _bounce(start[1] + direction[1] * speed * index, radius, height - radius)
        cv2.circle(frame, (round(x), round(y)), radius, sprite_colour, -1, cv2.LINE_AA)
        frames[index] = frame
    return frames


def encode_jpeg(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("cv2.imencode failed to encode a JPEG poster")
    return buffer.tobytes()


def write_wav(path: Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    # Quantised here rather than by libsndfile so the bytes do not depend on its float scaling.
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    soundfile.write(str(path), pcm, sample_rate, subtype="PCM_16", format="WAV")


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*VIDEO_FOURCC), float(fps), (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cv2.VideoWriter cannot encode fourcc {VIDEO_FOURCC!r} to {path}")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame))
    finally:
        writer.release()


def write_media(out_dir: Path, config: DemoDataConfig, catalog: Sequence[CatalogItem]) -> None:
    media_dirs = [out_dir / "posters", out_dir / "audio", out_dir / "video"]
    for media_dir in media_dirs:
        # Cleared, not merged: a previous larger run must not leave orphan files behind.
        if media_dir.exists():
            shutil.rmtree(media_dir)
        media_dir.mkdir(parents=True)

    started = time.perf_counter()
    total = len(catalog)
    for done, item in enumerate(catalog, start=1):
        style = CLUSTER_STYLES[item.cluster]
        if item.has_poster:
            poster = draw_poster(style, stream_rng(config.seed, STREAM_POSTER, item.item_id))
            (out_dir / item.poster_path).write_bytes(encode_jpeg(poster))
        if item.has_trailer:
            audio_rng = stream_rng(config.seed, STREAM_AUDIO, item.item_id)
            audio = synth_trailer_audio(style, audio_rng, config.audio_seconds)
            write_wav(out_dir / item.audio_path, audio)
            frames = render_trailer_video(
                style, stream_rng(config.seed, STREAM_VIDEO, item.item_id), config.video_frame_count
            )
            write_mp4(out_dir / item.video_path, frames, config.video_fps)
        if done % PROGRESS_EVERY == 0 or done == total:
            elapsed = time.perf_counter() - started
            log.info("media %d/%d items (%.0f items/s)", done, total, done / elapsed if elapsed > 0 else 0.0)
