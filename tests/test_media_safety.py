"""Hostile media without Spark: the file checks every media path passes (regular files only, size cap
before reading, symlinks kept inside their folder, NUL bytes and OS errors as reasons), images typed
by content, and the decode sandbox's real child process surviving a decoder that crashes or hangs."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile

from features.audio import AudioExtractor
from features.image import ImageExtractor, decode_image, image_format
from features.video import VideoExtractor
from jobs import media_files
from jobs.catalog_media import resolve_media_path
from jobs.config import load_config
from jobs.decode_sandbox import CHILD_INHERITS, DECODE_FAULTS, DecodeLimits, DecodeSandbox

LIMITS = DecodeLimits(max_bytes=200_000, timeout_s=20, memory_mb=1024, max_image_pixels=10_000)


def jpeg(height: int = 48, width: int = 64) -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((height, width, 3), (40, 90, 200), np.uint8))
    assert ok
    return data.tobytes()


def one_second_wav() -> bytes:
    t = np.arange(22_050) / 22_050
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 22_050, format="WAV")
    return buffer.getvalue()


def ten_frame_mp4(path: Path, width: int = 64, height: int = 48) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (width, height))
    for frame in range(10):
        writer.write(np.full((height, width, 3), (20 * frame, 100, 200), np.uint8))
    writer.release()
    return path.read_bytes()


def test_only_regular_files_within_the_cap_are_read(tmp_path):
    good = tmp_path / "1.jpg"
    good.write_bytes(jpeg())
    fifo = tmp_path / "2.jpg"
    os.mkfifo(fifo)  # open() for reading would block until a writer came: must not be opened
    (tmp_path / "3.jpg").mkdir()
    loop = tmp_path / "4.jpg"
    loop.symlink_to(loop)  # ELOOP: an OSError that is neither "not found" nor "permission"
    big = tmp_path / "5.jpg"
    big.write_bytes(b"\xff" * 1001)

    read = media_files.read_media_file
    assert read(str(good), 10_000) == good.read_bytes()
    assert read(str(fifo), 10_000) == "not a regular file"
    assert read(str(tmp_path / "3.jpg"), 10_000) == "not a regular file"
    assert read(str(loop), 10_000) == "unreadable file"
    assert read(str(big), 1000) == "file too large" and read(str(big), 1001) == big.read_bytes()
    assert read(str(tmp_path / "gone.jpg"), 10_000) == "file not found"
    assert read(str(tmp_path / "1\x00.jpg"), 10_000) == "media path contains a NUL byte"
    assert media_files.sha256_of_media_file(str(fifo)) == (None, "not a regular file")
    assert media_files.sha256_of_media_file(str(loop)) == (None, "unreadable file")


def _read_as_nobody(path: str) -> str | bytes:
    """`read_media_file` with the file-system user of `nobody`, in a thread of its own.

    Root reads a chmod-000 file regardless (CAP_DAC_OVERRIDE). Linux's setfsuid is per thread, and moving
    the file-system uid off 0 drops the DAC override capabilities, so this thread really is refused.
    """
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    outcome = {}

    def read() -> None:
        libc.setfsuid(65534)
        try:
            outcome["value"] = media_files.read_media_file(path, 10**6)
        finally:
            libc.setfsuid(0)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    return outcome["value"]


def test_an_unreadable_file_is_a_permission_reason():
    folder = Path(tempfile.mkdtemp(prefix="modalrank-perm-"))
    try:
        folder.chmod(0o755)  # traversable by anyone: only the file's own mode refuses the read
        secret = folder / "1.jpg"
        secret.write_bytes(jpeg())
        secret.chmod(0o000)
        value = (
            _read_as_nobody(str(secret)) if os.geteuid() == 0 else media_files.read_media_file(str(secret), 10**6)
        )
        assert value == "permission denied"
        secret.chmod(0o644)
        assert (_read_as_nobody(str(secret)) if os.geteuid() == 0 else None) in (secret.read_bytes(), None)
    finally:
        shutil.rmtree(folder)


def test_media_folder_symlinks_stay_inside_and_keep_their_own_name(tmp_path):
    folder = tmp_path / "posters"
    (folder / "originals").mkdir(parents=True)
    (folder / "originals" / "7.jpg").write_bytes(jpeg())
    (tmp_path / "elsewhere.jpg").write_bytes(jpeg())
    (folder / "42.jpg").symlink_to(folder / "originals" / "7.jpg")
    (folder / "43.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    (folder / "44.jpg").symlink_to("../posters/originals/7.jpg")  # relative, still inside
    os.mkfifo(folder / "45.jpg")

    entry = media_files.media_folder_entry
    inside = entry(str(folder), "42.jpg")
    assert (inside.name, inside.path, inside.reason) == ("42.jpg", str(folder / "originals" / "7.jpg"), None)
    assert entry(str(folder), "44.jpg").path == str(folder / "originals" / "7.jpg")
    assert entry(str(folder), "43.jpg") == media_files.FolderEntry("43.jpg", None, "symlink escapes media folder")
    assert entry(str(folder), "45.jpg") == media_files.FolderEntry("45.jpg", None, "not a regular file")


def test_catalog_paths_with_a_nul_byte_or_leaving_the_root_are_refused(tmp_path):
    (tmp_path / "media").mkdir()
    (tmp_path / "outside.jpg").write_bytes(jpeg())
    (tmp_path / "media" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    assert resolve_media_path(str(tmp_path / "media"), "posters/1\x00.jpg") == (
        None,
        "media path contains a NUL byte",
    )
    assert resolve_media_path(str(tmp_path / "media"), "link.jpg") == (None, "media path escapes media root")


def test_images_are_typed_by_content_not_extension():
    ok, png = cv2.imencode(".png", np.zeros((10, 12, 3), np.uint8))
    ok, tiff = cv2.imencode(".tiff", np.zeros((10, 12, 3), np.uint8))
    ok, ppm = cv2.imencode(".ppm", np.zeros((10, 12, 3), np.uint8))
    assert (image_format(png.tobytes()), image_format(jpeg())) == ("png", "jpeg")
    assert (image_format(tiff.tobytes()), image_format(ppm.tobytes())) == ("tiff", "pnm")
    assert image_format(one_second_wav()) is None
    assert decode_image(png.tobytes()).shape == (10, 12, 3)  # whatever the file was called
    for data, reason in ((tiff, "unsupported image format"), (ppm, "unsupported image format")):
        with pytest.raises(ValueError, match=reason):
            decode_image(data.tobytes())  # OpenCV would decode it, with no header check of ours


def test_sandbox_survives_a_crashing_and_a_hanging_decoder(tmp_path, monkeypatch):
    for name in ("good.jpg", "crash.jpg", "hang.jpg", "after.jpg"):
        (tmp_path / name).write_bytes(jpeg())
    ok, over_limit = cv2.imencode(".png", np.zeros((101, 100, 3), np.uint8))  # 10,100 px > 10,000
    (tmp_path / "big.png").write_bytes(over_limit.tobytes())
    (tmp_path / "huge.jpg").write_bytes(jpeg() + b"\x00" * LIMITS.max_bytes)
    # Real signals to the real child, just before it decodes these files: a segfault and a hang.
    monkeypatch.setenv(DECODE_FAULTS, "crash.jpg=SIGSEGV,hang.jpg=SIGSTOP")
    limits = DecodeLimits(**{**LIMITS.__dict__, "timeout_s": 5})
    outcomes, pids = {}, {}
    with DecodeSandbox("image", limits) as sandbox:
        for name in ("good.jpg", "crash.jpg", "hang.jpg", "big.png", "huge.jpg", "after.jpg"):
            value, reason = sandbox.decode(str(tmp_path / name))
            outcomes[name] = reason or type(value).__name__
            pids[name] = sandbox.process.pid if sandbox.process else None
        assert sandbox.restarts == 2
        stopped = pids["hang.jpg"]
    assert outcomes == {
        "good.jpg": "tuple",
        "crash.jpg": "decoder crashed (signal 11)",
        "hang.jpg": "decode timed out",
        "big.png": "image too large",
        "huge.jpg": "file too large",
        "after.jpg": "tuple",
    }
    assert pids["hang.jpg"] is None or not Path(f"/proc/{stopped}").exists()  # the stopped child was reaped


def test_sandbox_decodes_audio_and_video_like_the_extractor_in_process(tmp_path):
    wav = tmp_path / "1.wav"
    wav.write_bytes(one_second_wav())
    mp4_bytes = ten_frame_mp4(tmp_path / "2.mp4")
    with DecodeSandbox("audio", LIMITS) as sandbox:
        clip, reason = sandbox.decode(str(wav))
    assert reason is None
    expected = AudioExtractor().decode(wav.read_bytes())
    assert np.array_equal(clip.samples, expected.samples) and clip.sample_rate == 22_050
    ten_frame_mp4(tmp_path / "3.mp4", width=160, height=96)  # 15,360 pixels a frame, over the 10,000 limit
    with DecodeSandbox("video", LIMITS) as sandbox:
        scanned, reason = sandbox.decode(str(tmp_path / "2.mp4"))
        _, not_video = sandbox.decode(str(wav))
        _, too_large = sandbox.decode(str(tmp_path / "3.mp4"))
    assert reason is None and not_video == "undecodable video" and too_large == "video frames too large"
    expected = VideoExtractor(device="cpu").decode(mp4_bytes)
    assert scanned.decoded == expected.decoded == 10
    assert all(np.array_equal(a, b) for a, b in zip(scanned.frames, expected.frames, strict=True))


def test_a_memory_bomb_within_the_pixel_limit_fails_in_the_child(tmp_path):
    # 6000 x 6000 = 36 M pixels passes the header check; decoding needs ~108 MB, over a 64 MB allowance.
    ok, png = cv2.imencode(".png", np.zeros((6000, 6000, 3), np.uint8))
    (tmp_path / "bomb.png").write_bytes(png.tobytes())
    (tmp_path / "ok.jpg").write_bytes(jpeg())
    limits = DecodeLimits(max_bytes=10**7, timeout_s=60, memory_mb=64, max_image_pixels=40_000_000)
    with DecodeSandbox("image", limits) as sandbox:
        _, reason = sandbox.decode(str(tmp_path / "bomb.png"))
        value, after = sandbox.decode(str(tmp_path / "ok.jpg"))
    assert reason == "decoder out of memory"
    assert after is None and value is not None


def test_a_child_killed_from_outside_is_reported_and_replaced(tmp_path):
    (tmp_path / "1.jpg").write_bytes(jpeg())
    with DecodeSandbox("image", LIMITS) as sandbox:
        assert sandbox.decode(str(tmp_path / "1.jpg"))[1] is None
        os.kill(sandbox.process.pid, signal.SIGKILL)  # what the kernel's OOM killer does
        sandbox.process.wait()
        assert sandbox.decode(str(tmp_path / "1.jpg"))[1] == "decoder crashed (signal 9)"
        assert sandbox.decode(str(tmp_path / "1.jpg"))[1] is None


def test_the_decode_child_inherits_only_what_it_needs(tmp_path, monkeypatch):
    (tmp_path / "1.jpg").write_bytes(jpeg())
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-decoders")
    monkeypatch.setenv("AIRFLOW_CONN_MODALRANK_SPARK", '{"conn_type": "spark", "password": "x"}')
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    with DecodeSandbox("image", LIMITS) as sandbox:
        assert sandbox.decode(str(tmp_path / "1.jpg"))[1] is None
        raw = Path(f"/proc/{sandbox.process.pid}/environ").read_bytes()
        temp_folder = sandbox.temp_folder
    child = dict(entry.split("=", 1) for entry in raw.decode().split("\0") if entry)
    assert not [name for name in child if name.startswith(("AWS_", "AIRFLOW"))]
    assert set(child) <= set(CHILD_INHERITS) | {
        "LC_ALL",
        "TMPDIR",
        "OPENCV_IO_MAX_IMAGE_PIXELS",
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
    }
    assert (child["TMPDIR"], child["OPENCV_IO_MAX_IMAGE_PIXELS"], child["LC_ALL"]) == (
        temp_folder,
        "10000",
        "C.UTF-8",
    )
    assert not Path(temp_folder).exists()  # the child's temporary folder goes with it


def test_a_hostile_reply_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    for name in ("pickled.jpg", "oversized.jpg", "after.jpg"):
        (tmp_path / name).write_bytes(jpeg())
    # The real child answers as a compromised decoder would: a pickle that creates a file when loaded,
    # and a header announcing one byte more than the parent takes.
    monkeypatch.setenv(DECODE_FAULTS, "pickled.jpg=PICKLE_REPLY,oversized.jpg=OVERSIZED_REPLY")
    with DecodeSandbox("image", LIMITS) as sandbox:
        outcomes = [sandbox.decode(str(tmp_path / name)) for name in ("pickled.jpg", "oversized.jpg", "after.jpg")]
        assert sandbox.restarts == 2
    assert [reason for _, reason in outcomes] == ["decoder reply refused", "decoder reply refused", None]
    assert not (tmp_path / "pickled.jpg.unpickled").exists()
    image, descriptors, meta = outcomes[2][0]
    expected_image, expected_descriptors, expected_meta = ImageExtractor(device="cpu").decode(jpeg())
    assert np.array_equal(image, expected_image) and image.flags.writeable
    assert np.array_equal(descriptors, expected_descriptors) and meta == expected_meta


def test_a_file_swapped_after_ingest_is_never_decoded_under_its_old_hash(tmp_path):
    """Extraction reads what ingest hashed or nothing: the bytes are checked against ingest's content hash,
    and a path that has become a symlink (on its last component or above it) is refused at read time."""
    poster = tmp_path / "posters" / "1.jpg"
    poster.parent.mkdir()
    poster.write_bytes(jpeg())
    ingested_hash, _ = media_files.sha256_of_media_file(str(poster))
    (tmp_path / "other.jpg").write_bytes(jpeg(32, 32))
    with DecodeSandbox("image", LIMITS) as sandbox:
        value, reason = sandbox.decode(str(poster), ingested_hash)
        assert reason is None and value[0].shape == (224, 224, 3)
        poster.write_bytes(jpeg(32, 32))  # another picture under the same name, after ingest
        assert sandbox.decode(str(poster), ingested_hash) == (None, "content changed since ingest")
        new_hash, _ = media_files.sha256_of_media_file(str(poster))
        assert sandbox.decode(str(poster), new_hash)[1] is None  # the next ingest's hash: extracted
        poster.unlink()
        poster.symlink_to(tmp_path / "other.jpg")  # a link where the file was
        assert sandbox.decode(str(poster), new_hash) == (None, "media path changed since ingest (a symlink on it)")
        poster.unlink()
        shutil.move(tmp_path / "posters", tmp_path / "moved")
        (tmp_path / "posters").symlink_to(tmp_path / "moved")  # a link above it: the folder itself
        (tmp_path / "moved" / "1.jpg").write_bytes(jpeg())
        assert sandbox.decode(str(poster), ingested_hash)[1] == "media path changed since ingest (a symlink on it)"
    # The reader itself, as the child calls it: O_NOFOLLOW on the last component.
    assert media_files.read_media_file(str(tmp_path / "moved" / "1.jpg"), 10**6, ingested_hash) == jpeg()


def test_a_memory_limit_below_the_size_cap_still_decodes_small_files(tmp_path):
    # Reading reserves what the file holds, not the cap: a 2 GiB cap under a 64 MiB limit decodes a poster.
    (tmp_path / "1.jpg").write_bytes(jpeg())
    limits = DecodeLimits(max_bytes=2 * 1024**3, timeout_s=20, memory_mb=64, max_image_pixels=10_000)
    with DecodeSandbox("image", limits) as sandbox:
        value, reason = sandbox.decode(str(tmp_path / "1.jpg"))
    assert reason is None and value[0].shape == (224, 224, 3)


def test_a_memory_limit_that_cannot_hold_the_size_cap_is_refused_with_one_message():
    with pytest.raises(ValueError) as refused:
        load_config(max_media_bytes=2 * 1024**3, decode_memory_mb=2048)
    assert str(refused.value) == (
        "decode_memory_mb=2048 cannot hold one media file of max_media_bytes=2147483648 plus 256 MiB to decode "
        "it: set MODALRANK_DECODE_MEMORY_MB to at least 2304, or lower MODALRANK_MAX_MEDIA_BYTES"
    )
    assert load_config(max_media_bytes=2 * 1024**3, decode_memory_mb=2304).decode_memory_mb == 2304
    assert load_config(max_media_bytes=10**6, decode_memory_mb=257).decode_memory_mb == 257


def test_a_clip_killed_mid_decode_leaves_no_temporary_copy(tmp_path):
    """The video decoder copies the clip to a temporary file for FFmpeg; a child killed while decoding
    (here: frozen by the test as soon as that copy appears, so its decode outlives the limit) must not
    leave the copy behind."""
    ten_frame_mp4(tmp_path / "short.mp4")
    writer = cv2.VideoWriter(str(tmp_path / "long.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))
    for frame in range(500):
        writer.write(np.full((48, 64, 3), (frame % 250, 100, 200), np.uint8))
    writer.release()
    limits = DecodeLimits(**{**LIMITS.__dict__, "timeout_s": 3})
    seen: list[str] = []
    with DecodeSandbox("video", limits) as sandbox:
        assert sandbox.decode(str(tmp_path / "short.mp4"))[1] is None
        folder, pid = sandbox.temp_folder, sandbox.process.pid

        def freeze_when_the_copy_appears() -> None:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and not seen:
                seen.extend(name for name in os.listdir(folder) if name.startswith("modalrank-video-"))
                if seen:
                    os.kill(pid, signal.SIGSTOP)
                time.sleep(0.0002)

        watcher = threading.Thread(target=freeze_when_the_copy_appears)
        watcher.start()
        _, reason = sandbox.decode(str(tmp_path / "long.mp4"))
        watcher.join()
        assert seen and reason == "decode timed out"
        assert not Path(folder).exists()  # the frozen child was killed and its folder removed with it
        value, again = sandbox.decode(str(tmp_path / "short.mp4"))
        assert again is None and value.decoded == 10 and sandbox.temp_folder != folder


def test_decoding_work_per_clip_is_bounded_whatever_the_header_says(tmp_path):
    wav = tmp_path / "1.wav"
    wav.write_bytes(one_second_wav())  # 22,050 Hz, 1 s
    ten_frame_mp4(tmp_path / "2.mp4")  # 64 x 48 at 10 fps: 30,720 pixels per second of clip
    bounded = dict(LIMITS.__dict__, max_video_frames=4, max_audio_seconds=0.5)
    with DecodeSandbox("video", DecodeLimits(**bounded)) as sandbox:
        scanned, reason = sandbox.decode(str(tmp_path / "2.mp4"))
    assert reason is None and scanned.decoded == 4  # frames past the bound are never decoded
    assert scanned.duration == pytest.approx(1.0)  # the container's own length still counts
    with DecodeSandbox("video", DecodeLimits(**{**bounded, "max_video_pixels_per_second": 30_719})) as sandbox:
        assert sandbox.decode(str(tmp_path / "2.mp4")) == (None, "video decode rate too high")
    with DecodeSandbox("audio", DecodeLimits(**bounded)) as sandbox:
        clip, reason = sandbox.decode(str(wav))
    assert reason is None and clip.samples.shape == (11_025,) and clip.duration == pytest.approx(1.0)
    with DecodeSandbox("audio", DecodeLimits(**{**bounded, "max_audio_sample_rate": 16_000})) as sandbox:
        assert sandbox.decode(str(wav)) == (None, "audio sample rate too high")


def test_ingest_hashes_within_the_size_cap_without_reading_a_larger_file(tmp_path):
    sparse = tmp_path / "30g.mp4"
    with open(sparse, "wb") as handle:
        handle.truncate(30 * 1024**3)  # 30 GB of holes: reading it whole would take minutes
    capped = tmp_path / "capped.mp4"
    capped.write_bytes(b"\x01" * 3_000_000)  # three hashing chunks, exactly at the cap
    # Refused from its stat: the test would spend minutes here if the 30 GB were read.
    assert media_files.sha256_of_media_file(str(sparse), 2 * 1024**3) == (None, "file too large")
    assert media_files.sha256_of_media_file(str(capped), 3_000_000) == (
        hashlib.sha256(capped.read_bytes()).hexdigest(),
        None,
    )
    assert media_files.sha256_of_media_file(str(capped), 2_999_999) == (None, "file too large")
    assert media_files.media_folder_entry(str(tmp_path), "30g.mp4", 2 * 1024**3).reason == "file too large"
