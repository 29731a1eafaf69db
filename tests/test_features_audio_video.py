"""AudioExtractor and VideoExtractor on media the tests make themselves (no Spark, no shared data).

Tones are synthesised with numpy and written with soundfile to memory; clips are written with
cv2.VideoWriter (mp4v) to tmp_path and read back as bytes. Extraction is the slow part (librosa's
first call compiles, every clip runs EfficientNet), so extractors are module-scoped and the synthetic
clips go through the video extractor in one batch whose results several tests share.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile
import torch

from features import audio, video
from features.audio import AudioExtractor
from features.base import Extraction
from features.video import VideoExtractor
from infra.tools.demo_data import DemoDataConfig, generate_demo_data

SR = 22_050


# ---------------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module")
def audio_extractor() -> AudioExtractor:
    extractor = AudioExtractor()
    extractor.warm_up()
    return extractor


@pytest.fixture(scope="module")
def video_extractor() -> VideoExtractor:
    extractor = VideoExtractor(device="cpu")
    extractor.warm_up()
    return extractor


def tone(frequency: float, seconds: float, rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def encode(samples: np.ndarray, rate: int = SR, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def extract_one(extractor, data: bytes) -> Extraction:
    [result] = extractor.extract_batch([data])
    return result


def centroid_hz(vector: np.ndarray) -> float:
    # The documented layout: [92] is the mean spectral centroid in kHz.
    return float(vector[audio.CENTROID_MEAN]) * 1000.0


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> bytes:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def gradient(top: tuple[int, int, int], bottom: tuple[int, int, int], size=(96, 64)) -> np.ndarray:
    width, height = size
    weights = np.linspace(0.0, 1.0, height)[:, None, None]
    column = (1 - weights) * np.array(top, float) + weights * np.array(bottom, float)
    return np.repeat(column, width, axis=1).astype(np.uint8)


def textured() -> np.ndarray:
    # Real footage spreads over many histogram bins; a flat synthetic gradient can sit on one bin edge.
    noise = np.random.default_rng(5).integers(-20, 21, (64, 96, 3))
    return np.clip(gradient((160, 90, 40), (80, 45, 20)) + noise, 0, 255).astype(np.uint8)


def moving_square(count: int, speed: float, background: np.ndarray | None = None) -> list[np.ndarray]:
    background = gradient((160, 90, 40), (80, 45, 20)) if background is None else background
    frames = []
    for index in range(count):
        frame = background.copy()
        x = 4 + round(speed * index) % 70
        cv2.rectangle(frame, (x, 22), (x + 16, 38), (255, 255, 255), -1)
        frames.append(frame)
    return frames


def stripes(count: int) -> list[np.ndarray]:
    frames = []
    for index in range(count):
        frame = np.full((64, 96, 3), (30, 60, 220), np.uint8)
        for x in range(-64 + index, 96, 16):
            cv2.line(frame, (x, 0), (x + 64, 63), (40, 230, 250), 4)
        frames.append(frame)
    return frames


# ---------------------------------------------------------------------------------------------------
# Audio


def test_audio_vector_has_a_fixed_length_for_any_clip_length(audio_extractor):
    results = audio_extractor.extract_batch([encode(tone(440, s)) for s in (0.5, 3.0, 20.0)])
    assert AudioExtractor.dim == 111
    for result, seconds in zip(results, (0.5, 3.0, 20.0), strict=True):
        assert result.ok, result.error
        assert result.vector.shape == (111,) and result.vector.dtype == np.float32
        assert result.meta["duration"] == pytest.approx(seconds)
        assert result.vector[audio.DURATION] == pytest.approx(seconds / 60)


def test_audio_analyses_only_the_first_minute(audio_extractor):
    result = extract_one(audio_extractor, encode(tone(440, 61.0)))
    assert result.ok
    assert result.meta["analysed_seconds"] == pytest.approx(60.0)
    assert result.meta["duration"] == pytest.approx(61.0)


@pytest.mark.parametrize("frequency", [440.0, 2000.0])
def test_audio_spectral_centroid_of_a_sine_is_its_frequency(audio_extractor, frequency):
    result = extract_one(audio_extractor, encode(tone(frequency, 2.0)))
    assert centroid_hz(result.vector) == pytest.approx(frequency, rel=0.10)
    # The roll-off of a pure tone sits on the tone too.
    assert result.vector[audio.ROLLOFF_MEAN] * 1000 == pytest.approx(frequency, rel=0.10)


def test_audio_same_bytes_give_the_same_vector(audio_extractor):
    data = encode(tone(330, 1.5) + tone(990, 1.5, amplitude=0.1))
    first = extract_one(audio_extractor, data)
    second = audio_extractor.extract_batch([encode(tone(1000, 1.0)), data])[1]
    np.testing.assert_array_equal(first.vector, second.vector)


def relative_distance(a: Extraction, b: Extraction) -> float:
    return float(np.linalg.norm(a.vector - b.vector) / np.linalg.norm(a.vector))


@pytest.mark.parametrize("fmt", ["FLAC", "OGG"])
def test_audio_flac_and_ogg_decode_close_to_the_wav(audio_extractor, fmt):
    if fmt not in soundfile.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    # Quantised once, here: libsndfile's WAV and FLAC writers round floats differently, and a pure tone's
    # near-empty bands (spectral-contrast valleys) are all quantisation noise.
    pcm = np.round((tone(440, 2.0) + tone(1320, 2.0, amplitude=0.1)) * 32767).astype(np.int16)
    other_pcm = np.round((tone(494, 2.0) + tone(1482, 2.0, amplitude=0.1)) * 32767).astype(np.int16)
    wav, coded, other = audio_extractor.extract_batch([encode(pcm), encode(pcm, fmt=fmt), encode(other_pcm)])
    assert coded.ok, coded.error
    if fmt == "FLAC":  # lossless: the very same samples
        np.testing.assert_array_equal(coded.vector, wav.vector)
    else:  # Vorbis shifts the spectrum's floor, yet the clip stays far nearer its WAV than a tone apart
        assert centroid_hz(coded.vector) == pytest.approx(centroid_hz(wav.vector), rel=0.02)
        assert relative_distance(wav, coded) < 0.5 * relative_distance(wav, other)


def test_audio_stereo_is_mixed_to_mono(audio_extractor):
    mono = tone(440, 2.0)
    stereo = np.stack([mono, mono], axis=1)
    mono_result, stereo_result = audio_extractor.extract_batch([encode(mono), encode(stereo)])
    assert stereo_result.ok and stereo_result.meta["channels"] == 2
    np.testing.assert_allclose(stereo_result.vector, mono_result.vector, rtol=1e-4, atol=1e-4)


def test_audio_44k_input_is_resampled(audio_extractor):
    native, resampled, other = audio_extractor.extract_batch(
        [encode(tone(440, 2.0)), encode(tone(440, 2.0, 44_100), 44_100), encode(tone(494, 2.0))]
    )
    assert resampled.ok
    assert resampled.meta["sample_rate"] == 44_100
    assert resampled.meta["duration"] == pytest.approx(2.0)
    assert centroid_hz(resampled.vector) == pytest.approx(440, rel=0.10)
    # Not equal (soxr's anti-alias filter reshapes the empty top band), but far nearer than a tone apart.
    assert relative_distance(native, resampled) < 0.5 * relative_distance(native, other)


def test_audio_failures_have_fixed_phrases_and_do_not_stop_the_batch(audio_extractor):
    wav = encode(tone(440, 1.0))
    inputs = {
        "silent audio": encode(np.zeros(SR, np.float32)),
        "empty file": b"",
        "undecodable audio": np.random.default_rng(0).bytes(5000),
        "audio too short": encode(tone(440, 0.05)),
    }
    before = audio_extractor.inferences
    results = audio_extractor.extract_batch([*inputs.values(), wav])
    assert [r.error for r in results] == [*inputs, None]
    assert all(r.vector is None for r in results[:-1]) and results[-1].ok
    # Only the clip that decoded reached librosa.
    assert audio_extractor.inferences == before + 1


@pytest.mark.parametrize("cut", [10, 30, 43])
def test_audio_wav_cut_inside_its_header_is_undecodable(audio_extractor, cut):
    result = extract_one(audio_extractor, encode(tone(440, 1.0))[:cut])
    assert result.error == "undecodable audio"


def test_audio_wav_cut_inside_its_data_decodes_what_is_there(audio_extractor):
    data = encode(tone(440, 2.0), subtype="PCM_16")
    result = extract_one(audio_extractor, data[: 44 + SR * 2])  # header + 1 s of 16-bit samples
    assert result.ok
    assert result.meta["duration"] == pytest.approx(1.0, abs=0.01)


def test_audio_tempo_of_a_120_bpm_click_track(audio_extractor):
    clicks = np.zeros(SR * 8, np.float32)
    click = tone(1000, 0.01, amplitude=0.8) * np.hanning(round(0.01 * SR)).astype(np.float32)
    for beat in range(16):
        start = round(beat * 0.5 * SR)
        clicks[start : start + len(click)] = click
    result = extract_one(audio_extractor, encode(clicks))
    tempo = result.vector[audio.TEMPO] * 200
    assert tempo == pytest.approx(result.meta["tempo"], rel=1e-6)
    assert any(abs(tempo - bpm) <= 0.08 * bpm for bpm in (60, 120, 240)), tempo


# ---------------------------------------------------------------------------------------------------
# Video


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("clips")
    made = {
        "fast": moving_square(10, speed=7),
        "static": moving_square(10, speed=0),
        "cut": [np.full((64, 96, 3), (200, 60, 40) if i < 5 else (30, 200, 240), np.uint8) for i in range(10)],
        # A slow fade over a textured scene with a slowly moving square: no frame-to-frame jump.
        "smooth": [
            cv2.add(frame, np.full_like(frame, 3 * i))
            for i, frame in enumerate(moving_square(10, speed=1, background=textured()))
        ],
        "five_seconds": moving_square(50, speed=1),
        "scene_a": moving_square(10, speed=1),
        "scene_a_again": moving_square(10, speed=1, background=gradient((165, 95, 45), (85, 50, 25)))[::-1],
        "scene_b": stripes(10),
    }
    return {name: write_clip(folder / f"{name}.mp4", frames) for name, frames in made.items()}


@pytest.fixture(scope="module")
def clip_results(video_extractor, clips) -> dict[str, Extraction]:
    return dict(zip(clips, video_extractor.extract_batch(list(clips.values())), strict=True))


def test_video_fast_motion_scores_higher_than_a_static_shot(clip_results):
    fast, static = clip_results["fast"].vector, clip_results["static"].vector
    assert static[video.MOTION_MEAN] == pytest.approx(0.0, abs=1e-3)
    assert fast[video.MOTION_MEAN] > static[video.MOTION_MEAN] + 0.01
    assert fast[video.MOTION_MAX] > fast[video.MOTION_P90] >= 0


def test_video_hard_cut_is_counted_and_a_smooth_clip_has_none(clip_results):
    cut, smooth = clip_results["cut"], clip_results["smooth"]
    assert cut.meta["cuts"] == 1
    assert cut.vector[video.CUT_RATE] == pytest.approx(1.0)  # one cut in a 1 s clip
    assert smooth.vector[video.CUT_RATE] == 0.0


def test_video_vector_has_a_fixed_length_and_documented_tail(clip_results):
    one, five = clip_results["fast"], clip_results["five_seconds"]
    assert VideoExtractor.dim == 2567
    for result, seconds in ((one, 1.0), (five, 5.0)):
        assert result.vector.shape == (2567,) and result.vector.dtype == np.float32
        assert result.meta["duration"] == pytest.approx(seconds)
        assert result.meta["fps"] == pytest.approx(10.0)
        assert result.vector[video.DURATION] == pytest.approx(seconds / 60)
        assert result.vector[video.FPS] == pytest.approx(10.0 / 60)
    # 2 frames per second of clip.
    assert (one.meta["frames_sampled"], five.meta["frames_sampled"]) == (2, 10)
    # Mean-pooling unit rows gives at most unit length; max-pooling dominates the mean.
    assert np.linalg.norm(five.vector[video.MEAN_POOL]) <= 1.0 + 1e-5
    assert np.all(five.vector[video.MAX_POOL] >= five.vector[video.MEAN_POOL] - 1e-6)


def test_video_frames_sampled_respects_the_cap(clips):
    capped = VideoExtractor(device="cpu", max_frames=3)
    result = extract_one(capped, clips["five_seconds"])
    assert result.meta["frames_sampled"] == 3
    assert result.vector.shape == (2567,)


def test_sample_indices_spread_evenly():
    assert video.sample_indices(16, 8.0, 2.0, 16) == [2, 6, 10, 14]
    assert video.sample_indices(50, 10.0, 2.0, 4) == [6, 18, 31, 43]
    assert video.sample_indices(1, 25.0, 2.0, 16) == [0]


def test_video_same_bytes_give_the_same_vector(video_extractor, clips, clip_results):
    again = video_extractor.extract_batch([clips["scene_b"], clips["fast"]])[1]
    np.testing.assert_array_equal(again.vector, clip_results["fast"].vector)


def test_video_failures_have_fixed_phrases(video_extractor, clips, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    frameless = bytearray(clips["fast"])
    # Zero the media data but keep the index: the container opens, no frame decodes.
    offset = 0
    while offset < len(frameless):
        size = int.from_bytes(frameless[offset : offset + 4], "big")
        if frameless[offset + 4 : offset + 8] == b"mdat":
            frameless[offset + 8 : offset + size] = bytes(size - 8)
        offset += size
    inputs = {
        "empty file": b"",
        "undecodable video": np.random.default_rng(1).bytes(20_000),
        "truncated": clips["five_seconds"][: int(len(clips["five_seconds"]) * 0.4)],
        "video has no frames": bytes(frameless),
    }
    before = video_extractor.inferences
    results = video_extractor.extract_batch(list(inputs.values()))
    assert [r.error for r in results] == [
        "empty file",
        "undecodable video",
        "undecodable video",
        "video has no frames",
    ]
    assert video_extractor.inferences == before
    assert not list(tmp_path.iterdir())  # every temporary copy was deleted


def test_video_without_a_frame_count_is_counted_by_reading(video_extractor):
    # FFmpeg opens a JPEG still as a one-frame stream that reports no frame count (and its default 25 fps).
    ok, jpeg = cv2.imencode(".jpg", stripes(1)[0])
    assert ok
    result = extract_one(video_extractor, jpeg.tobytes())
    assert result.ok, result.error
    assert result.meta["frames_sampled"] == 1 and result.meta["frames_decoded"] == 1
    assert result.meta["fps"] == video.FALLBACK_FPS
    assert result.vector[video.MOTION_MEAN] == 0.0


def test_video_appearance_separates_scenes(clip_results):
    def appearance(name: str) -> np.ndarray:
        block = clip_results[name].vector[video.MEAN_POOL]
        return block / np.linalg.norm(block)

    same = appearance("scene_a") @ appearance("scene_a_again")
    different = appearance("scene_a") @ appearance("scene_b")
    assert same > different + 0.05, (same, different)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_video_on_cuda_matches_cpu(clips, clip_results):
    gpu = VideoExtractor(device="cuda")
    names = ["fast", "cut", "scene_b"]
    for name, result in zip(names, gpu.extract_batch([clips[n] for n in names]), strict=True):
        on_cpu = clip_results[name].vector
        # cuDNN's TF32 convolutions move single embedding values by up to ~3e-3 (seen on an H100);
        # the direction stays put, and the OpenCV tail does not involve the GPU at all.
        for block in (video.MEAN_POOL, video.MAX_POOL):
            cosine = (
                result.vector[block]
                @ on_cpu[block]
                / np.linalg.norm(result.vector[block])
                / np.linalg.norm(on_cpu[block])
            )
            assert cosine > 0.9995
            np.testing.assert_allclose(result.vector[block], on_cpu[block], rtol=0, atol=1e-2)
        np.testing.assert_array_equal(result.vector[video.MOTION_MEAN :], on_cpu[video.MOTION_MEAN :])


# ---------------------------------------------------------------------------------------------------
# The demo's hidden clusters survive extraction


def _between_over_within(values: dict[int, float], cluster: dict[int, int]) -> tuple[float, float]:
    items = sorted(values)
    within, between = [], []
    for i, a in enumerate(items):
        for b in items[i + 1 :]:
            (within if cluster[a] == cluster[b] else between).append(abs(values[a] - values[b]))
    return float(np.mean(between)), float(np.mean(within))


def test_demo_clusters_survive_audio_and_video_extraction(tmp_path, audio_extractor):
    # Clusters 0-3: pitch 110/880/220/660 Hz and motion slow/static/slow+cuts/fast.
    generate_demo_data(tmp_path, DemoDataConfig(items=24, users=5, clusters=4, seed=1))
    with (tmp_path / "truth" / "items.csv").open() as handle:
        cluster = {int(row["item_id"]): int(row["cluster"]) for row in csv.DictReader(handle)}
    with (tmp_path / "catalog.csv").open() as handle:
        trailers = {int(row["item_id"]): row for row in csv.DictReader(handle) if row["audio_path"]}
    assert len(trailers) >= 20

    ids = sorted(trailers)
    sounds = audio_extractor.extract_batch([(tmp_path / trailers[i]["audio_path"]).read_bytes() for i in ids])
    # Two sampled frames per 2 s clip are enough for motion and keep the CPU test quick.
    videos = VideoExtractor(device="cpu", max_frames=2).extract_batch(
        [(tmp_path / trailers[i]["video_path"]).read_bytes() for i in ids]
    )
    assert all(r.ok for r in sounds + videos)

    centroid = {i: float(r.vector[audio.CENTROID_MEAN]) for i, r in zip(ids, sounds, strict=True)}
    between, within = _between_over_within(centroid, cluster)
    assert between > 2 * within, (between, within)

    motion = {i: float(r.vector[video.MOTION_MEAN]) for i, r in zip(ids, videos, strict=True)}
    between, within = _between_over_within(motion, cluster)
    assert between > 2 * within, (between, within)
    per_cluster = {c: np.mean([m for i, m in motion.items() if cluster[i] == c]) for c in set(cluster.values())}
    assert per_cluster[1] < min(per_cluster[0], per_cluster[2]) < per_cluster[3]  # static < slow < fast

    cut_rate = {i: float(r.vector[video.CUT_RATE]) for i, r in zip(ids, videos, strict=True)}
    assert all((cut_rate[i] > 0) == (cluster[i] == 2) for i in ids)  # only crime trailers cut
