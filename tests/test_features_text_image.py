"""Text and image extractors on inputs the tests make themselves: no Spark, no files from ../shared.

Images are drawn with OpenCV here; models load from site-packages. Every test checks values (norms,
similarities, exact failure phrases, header sizes), not just that a call returned.
"""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

from features import image as image_module
from features import models
from features.image import (
    BRIGHTNESS,
    COLOURFULNESS,
    DESCRIPTOR_DIM,
    EDGE_DENSITY,
    HISTOGRAM_DIM,
    SAT_BINS,
    VAL_BINS,
    ImageDecodeError,
    ImageExtractor,
    decode_image,
    embed_frames,
    image_size_from_header,
    opencv_descriptors,
)
from features.text import TextExtractor, compose_item_text

SPACE_A = "The rocket lifted off from the launch pad and carried the astronauts into orbit around the Earth."
SPACE_B = "A spacecraft was launched, taking the crew of astronauts up into space to circle the planet."
COOKING = "Chop the onions, fry them in butter until golden, then stir in the flour and simmer the sauce."
SHORT = "A quiet film about a lighthouse keeper."

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# Without a GPU the default device is the CPU itself: a default-vs-CPU comparison would prove nothing.
default_is_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA GPU, so the default device is the CPU and there is no second device to compare with it",
)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def vectors(results) -> list[np.ndarray]:
    assert all(result.ok for result in results), [result.error for result in results]
    return [result.vector for result in results]


# ---------------------------------------------------------------------------------------------------
# Text


@pytest.fixture(scope="module")
def text_cpu() -> TextExtractor:
    return TextExtractor(device="cpu")


def test_compose_item_text_puts_metadata_before_overview():
    text = compose_item_text(
        "Toy Story (1995)",
        "  A cowboy doll\nis threatened by a new spaceman. ",
        ["Adventure", "Animation"],
        ["pixar", "fun", "Pixar", " "],
    )
    assert text == (
        "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun. "
        "A cowboy doll is threatened by a new spaceman."
    )
    assert compose_item_text("Heat (1995)", None, [], []) == "Heat (1995)."
    assert compose_item_text("Heat (1995)", float("nan"), ["Crime"], []) == "Heat (1995). Genres: Crime."
    # Metadata survives however long the overview is.
    long = compose_item_text("Alien (1979)", "word " * 5000, ["Horror"], ["space"])
    assert long.startswith("Alien (1979). Genres: Horror. Tags: space. word word")


def test_text_vectors_are_unit_length_and_deterministic(text_cpu):
    first = text_cpu.extract_batch([SPACE_A])[0]
    again = text_cpu.extract_batch([SPACE_A])[0]
    assert first.ok and first.vector.dtype == np.float32 and first.vector.shape == (384,)
    assert TextExtractor.dim == 384
    assert np.linalg.norm(first.vector) == pytest.approx(1.0, abs=1e-5)
    assert np.array_equal(first.vector, again.vector)
    tokenizer, _ = models.load_minilm("cpu")
    assert first.meta == {"tokens": float(len(tokenizer(SPACE_A)["input_ids"])), "truncated": 0.0}


def test_paraphrases_are_closer_than_unrelated_text(text_cpu):
    space_a, space_b, cooking = vectors(text_cpu.extract_batch([SPACE_A, SPACE_B, COOKING]))
    same_topic, other_topic = cosine(space_a, space_b), cosine(space_a, cooking)
    assert same_topic > other_topic + 0.3, (same_topic, other_topic)


def test_bytes_input_and_failures_with_exact_phrases(text_cpu):
    text_vector, bytes_vector, bom_vector = vectors(
        text_cpu.extract_batch([SHORT, SHORT.encode(), b"\xef\xbb\xbf" + SHORT.encode()])
    )
    assert np.allclose(text_vector, bytes_vector, atol=1e-6)
    assert np.allclose(text_vector, bom_vector, atol=1e-6)
    failed = text_cpu.extract_batch([b"caf\xe9 latin-1", "", "  \n\t ", b"", "\u200b\u200b", None])
    assert [result.error for result in failed] == [
        "undecodable text (not valid UTF-8)",
        "empty text",
        "empty text",
        "empty text",
        "empty text",
        "empty text",
    ]
    assert all(result.vector is None for result in failed)


def test_long_text_is_truncated_at_256_tokens(text_cpu):
    rng = np.random.default_rng(0)
    words = ["galaxy", "engine", "orbit", "crew", "signal", "planet", "station", "launch"]
    long_text = " ".join(rng.choice(words, size=5000))
    result, head = text_cpu.extract_batch([long_text, " ".join(long_text.split()[:1000])])
    assert result.ok and result.meta == {"tokens": 256.0, "truncated": 1.0}
    assert np.linalg.norm(result.vector) == pytest.approx(1.0, abs=1e-5)
    # Both are cut at the same 254 words: the model saw the same tokens.
    assert np.allclose(result.vector, head.vector, atol=1e-6)


def test_a_texts_vector_does_not_depend_on_what_shares_its_call(text_cpu):
    """Bit for bit: the same text alone, among longer and shorter texts, after a failed input, in either
    order. (Padded batches rounded differently with their width, so an item's vector changed with its
    partition's other items, and an as-of rerun on another lake published other scores.)"""
    (alone,) = vectors(text_cpu.extract_batch([SHORT]))
    mixed = text_cpu.extract_batch([COOKING, "word " * 300, b"\xff", SHORT, SPACE_A])
    assert np.array_equal(mixed[3].vector, alone)
    backward = text_cpu.extract_batch([SPACE_A, SHORT, "word " * 300, COOKING])
    assert np.array_equal(backward[1].vector, alone)
    assert np.array_equal(backward[0].vector, mixed[4].vector) and np.array_equal(
        backward[3].vector, mixed[0].vector
    )


def test_padded_batches_embed_as_single_passes_do_within_rounding():
    """`batch_size` > 1 (the GPU default) pads similar lengths together: the same vectors up to float
    rounding, and each text is counted once."""
    small_batches = TextExtractor(device="cpu", batch_size=2)
    mixed = vectors(small_batches.extract_batch([SHORT, "word " * 300, COOKING]))
    single = vectors(TextExtractor(device="cpu").extract_batch([SHORT, "word " * 300, COOKING]))
    assert np.allclose(mixed, single, atol=1e-5) and not np.array_equal(mixed, np.zeros_like(mixed))
    assert small_batches.inferences == 3


def test_text_inferences_count_only_model_inputs():
    extractor = TextExtractor(device="cpu")
    results = extractor.extract_batch([SPACE_A, b"\xff\xfe\xfa", "   ", COOKING])
    assert [result.ok for result in results] == [True, False, False, True]
    assert extractor.inferences == 2
    extractor.extract_batch(["", b"\x80"])
    assert extractor.inferences == 2


@default_is_cuda
def test_text_default_device_is_cuda_and_matches_cpu(text_cpu):
    extractor = TextExtractor()
    assert extractor.device == models.default_device() == "cuda"
    (default,) = vectors(extractor.extract_batch([SPACE_B]))
    (cpu,) = vectors(text_cpu.extract_batch([SPACE_B]))
    assert cosine(default, cpu) > 0.999


@needs_cuda
def test_text_cuda_matches_cpu(text_cpu):
    texts = [SPACE_A, COOKING, "word " * 400]
    gpu = vectors(TextExtractor(device="cuda").extract_batch(texts))
    cpu = vectors(text_cpu.extract_batch(texts))
    for g, c in zip(gpu, cpu, strict=True):
        assert cosine(g, c) > 0.999


# ---------------------------------------------------------------------------------------------------
# Images: posters drawn here


def encode(image: np.ndarray, ext: str = ".png", params: list[int] | None = None) -> bytes:
    ok, buffer = cv2.imencode(ext, image, params or [])
    assert ok
    return buffer.tobytes()


def circles_poster(seed: int) -> np.ndarray:
    """Red and orange circles on a dark navy background, positions jittered by the seed."""
    rng = np.random.default_rng(seed)
    poster = np.full((278, 185, 3), (60, 20, 10), np.uint8)
    for _ in range(6):
        centre = (int(rng.integers(20, 165)), int(rng.integers(20, 258)))
        colour = (int(rng.integers(0, 40)), int(rng.integers(0, 120)), int(rng.integers(200, 256)))
        cv2.circle(poster, centre, int(rng.integers(18, 40)), colour, -1, cv2.LINE_AA)
    return poster


def stripes_poster(seed: int) -> np.ndarray:
    """Blue and white diagonal stripes."""
    rng = np.random.default_rng(seed)
    poster = np.full((278, 185, 3), 255, np.uint8)
    offset = int(rng.integers(0, 20))
    for x in range(-300, 300, 40):
        cv2.line(poster, (x + offset, 0), (x + offset + 278, 278), (200, 60, 0), 14, cv2.LINE_AA)
    return poster


def checkerboard(size: int = 200, square: int = 10) -> np.ndarray:
    tiles = (np.indices((size, size)) // square).sum(axis=0) % 2
    return np.repeat((tiles * 255).astype(np.uint8)[..., None], 3, axis=2)


@pytest.fixture(scope="module")
def image_cpu() -> ImageExtractor:
    return ImageExtractor(device="cpu")


def test_image_vector_layout_and_determinism(image_cpu):
    data = encode(circles_poster(1), ".jpg")
    first, again = image_cpu.extract_batch([data, data])
    assert ImageExtractor.dim == 1280 + DESCRIPTOR_DIM == 1280 + len(opencv_descriptors(circles_poster(1)))
    assert first.ok and first.vector.shape == (ImageExtractor.dim,) and first.vector.dtype == np.float32
    assert np.linalg.norm(first.vector[:1280]) == pytest.approx(1.0, abs=1e-5)
    assert first.meta == {"width": 185.0, "height": 278.0}
    assert np.array_equal(first.vector, again.vector)
    assert np.array_equal(first.vector, image_cpu.extract_batch([data, data])[0].vector)


def test_a_posters_vector_does_not_depend_on_what_shares_its_batch():
    """Bit for bit: alone, last in a full batch, in a short batch after a failure, in another order.
    (Unpadded, the CPU kernels of each batch size round differently, by up to ~3e-6.)"""
    extractor = ImageExtractor(device="cpu", batch_size=4)
    poster = encode(circles_poster(21), ".jpg")
    others = [encode(stripes_poster(seed)) for seed in range(22, 28)]
    alone = extractor.extract_batch([poster])[0].vector
    last_of_four = extractor.extract_batch([*others[:3], poster])[3].vector
    short_after_a_failure = extractor.extract_batch([*others[:4], b"not an image", poster])[5].vector
    reordered = extractor.extract_batch([poster, *others[::-1]])[0].vector
    for vector in (last_of_four, short_after_a_failure, reordered):
        assert np.array_equal(vector, alone)


def test_similar_posters_embed_closer_than_different_ones(image_cpu):
    circles_a, circles_b, stripes = vectors(
        image_cpu.extract_batch([encode(circles_poster(1)), encode(circles_poster(2)), encode(stripes_poster(3))])
    )
    same, different = cosine(circles_a[:1280], circles_b[:1280]), cosine(circles_a[:1280], stripes[:1280])
    assert same > different + 0.1, (same, different)


def test_hue_histogram_brightness_colourfulness_and_edges():
    red = opencv_descriptors(np.full((50, 60, 3), (0, 0, 255), np.uint8))
    histogram = red[:HISTOGRAM_DIM].reshape(-1, SAT_BINS, VAL_BINS)
    assert red[:HISTOGRAM_DIM].sum() == pytest.approx(1.0)
    assert histogram[0, SAT_BINS - 1, VAL_BINS - 1] == pytest.approx(1.0)  # red, saturated, bright
    # A red just short of 360 degrees (OpenCV hue 178) is red too, not the last hue bin.
    crimson = cv2.cvtColor(np.full((10, 10, 3), (178, 255, 255), np.uint8), cv2.COLOR_HSV2BGR)
    assert opencv_descriptors(crimson)[:HISTOGRAM_DIM].reshape(-1, SAT_BINS * VAL_BINS)[0].sum() == pytest.approx(
        1
    )
    blue = opencv_descriptors(np.full((10, 10, 3), (255, 0, 0), np.uint8))[:HISTOGRAM_DIM]
    assert blue.reshape(-1, SAT_BINS * VAL_BINS)[5].sum() == pytest.approx(1.0)  # 240 degrees: bin 5 (225 +-22.5)

    black = opencv_descriptors(np.zeros((40, 40, 3), np.uint8))
    white = opencv_descriptors(np.full((40, 40, 3), 255, np.uint8))
    assert black[BRIGHTNESS] == 0.0 and white[BRIGHTNESS] == 1.0
    assert black[COLOURFULNESS] == 0.0 and white[COLOURFULNESS] == 0.0
    poster = circles_poster(1)
    faded = cv2.addWeighted(
        poster, 0.3, cv2.cvtColor(cv2.cvtColor(poster, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR), 0.7, 0
    )
    assert red[COLOURFULNESS] > 0.5
    assert 1.0 > opencv_descriptors(poster)[COLOURFULNESS] > 2 * opencv_descriptors(faded)[COLOURFULNESS] > 0.05

    assert black[EDGE_DENSITY] == 0.0 and white[EDGE_DENSITY] == 0.0
    assert opencv_descriptors(checkerboard())[EDGE_DENSITY] > 0.1


def test_descriptors_accept_grey_and_bgra():
    board = checkerboard()
    grey = cv2.cvtColor(board, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(board, cv2.COLOR_BGR2BGRA)
    expected = opencv_descriptors(board)
    assert np.array_equal(opencv_descriptors(grey), expected)
    assert np.array_equal(opencv_descriptors(grey[..., None]), expected)
    assert np.array_equal(opencv_descriptors(bgra), expected)


def test_header_sizes_without_decoding():
    poster = circles_poster(4)[:, :171]  # 171 x 278: odd width, not square
    assert image_size_from_header(encode(poster, ".jpg")) == (171, 278)
    assert image_size_from_header(encode(poster, ".png")) == (171, 278)
    lossy = encode(poster, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80])
    lossless = encode(poster, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert lossy[12:16] == b"VP8 " and lossless[12:16] == b"VP8L"
    assert image_size_from_header(lossy) == (171, 278)
    assert image_size_from_header(lossless) == (171, 278)
    assert image_size_from_header(encode(poster, ".bmp")) == (171, 278)
    assert image_size_from_header(encode(poster, ".gif")) == (171, 278)
    # VP8X (extended WebP, e.g. with alpha or metadata): 24-bit canvas sizes minus one.
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x10\x00\x00\x00" + (170).to_bytes(3, "little")
    assert image_size_from_header(vp8x + (277).to_bytes(3, "little")) == (171, 278)
    assert image_size_from_header(b"\xff\xd8\xff") is None
    assert image_size_from_header(b"hello world") is None


def huge_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A well-formed PNG header (valid CRCs) claiming a huge RGB image, with a token IDAT behind it."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    extractor = ImageExtractor(device="cpu")
    bomb = huge_png()
    assert image_size_from_header(bomb) == (50_000, 50_000)

    def no_decoding(*args, **kwargs):
        raise AssertionError("cv2.imdecode was called on an image over the pixel limit")

    monkeypatch.setattr(image_module.cv2, "imdecode", no_decoding)
    (result,) = extractor.extract_batch([bomb])
    assert result.error == "image too large" and result.vector is None
    # The same check on a JPEG whose frame header claims 60000 x 60000.
    jpeg = bytearray(encode(circles_poster(5), ".jpg"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)
    assert extractor.extract_batch([bytes(jpeg)])[0].error == "image too large"
    assert extractor.inferences == 0


def test_max_pixels_is_configurable():
    extractor = ImageExtractor(device="cpu", max_pixels=100 * 100)
    small, large = extractor.extract_batch([encode(checkerboard(100)), encode(checkerboard(101))])
    assert small.ok and large.error == "image too large"
    assert extractor.inferences == 1


def test_undecodable_inputs_fail_with_fixed_phrases(image_cpu):
    jpeg = encode(circles_poster(6), ".jpg")
    rng = np.random.default_rng(7)
    cases = {
        b"": "empty file",
        rng.bytes(5000): "undecodable image",
        jpeg[: len(jpeg) // 2]: "undecodable image",
        jpeg[:-2]: "undecodable image",  # only the EOI marker missing
        b"\x89PNG\r\n\x1a\n" + rng.bytes(200): "undecodable image",
    }
    for data, reason in cases.items():
        with pytest.raises(ImageDecodeError) as raised:
            decode_image(data)
        assert raised.value.reason == reason
    extractor = ImageExtractor(device="cpu")
    results = extractor.extract_batch(list(cases) + ["a path, not bytes"])
    assert [result.error for result in results] == [*cases.values(), "not image bytes"]
    assert extractor.inferences == 0
    # Padding after the EOI marker is not truncation.
    assert decode_image(jpeg + b"\x00" * 16).shape == (278, 185, 3)


def test_grey_png_and_bad_input_in_a_batch(image_cpu):
    grey = cv2.cvtColor(circles_poster(8), cv2.COLOR_BGR2GRAY)
    colour = encode(stripes_poster(9), ".jpg")
    extractor = ImageExtractor(device="cpu")
    first, bad, last = extractor.extract_batch([encode(grey), b"not an image at all", colour])
    assert first.ok and last.ok and bad.error == "undecodable image"
    assert extractor.inferences == 2
    assert first.vector[1280 + COLOURFULNESS] == 0.0  # grey stays grey through decoding
    assert np.allclose(first.vector, image_cpu.extract_batch([encode(grey)])[0].vector, atol=1e-5)
    assert np.allclose(last.vector, image_cpu.extract_batch([colour])[0].vector, atol=1e-5)


def test_model_sized_copy_embeds_like_the_full_image():
    # The extractor shrinks to 224x224 right after decoding to save memory; the embedding must not change.
    big = cv2.resize(circles_poster(10), (370, 556), interpolation=cv2.INTER_LINEAR)
    small = circles_poster(11)[:150, :120]
    direct = models.efficientnet_embed([big, small], "cpu")
    shrunk = models.efficientnet_embed([image_module._model_sized(big), image_module._model_sized(small)], "cpu")
    assert np.allclose(direct, shrunk, atol=1e-5)


def test_embed_frames_matches_the_image_embedding(image_cpu):
    frames = [circles_poster(12), stripes_poster(13)]
    embedded = embed_frames(frames, "cpu")
    assert embedded.shape == (2, 1280) and embedded.dtype == np.float32
    assert np.allclose(np.linalg.norm(embedded, axis=1), 1.0, atol=1e-5)
    from_png = vectors(image_cpu.extract_batch([encode(frame) for frame in frames]))
    for row, vector in zip(embedded, from_png, strict=True):
        assert np.allclose(row, vector[:1280], atol=1e-5)


@default_is_cuda
def test_image_default_device_is_cuda_and_matches_cpu(image_cpu):
    extractor = ImageExtractor()
    assert extractor.device == models.default_device() == "cuda"
    data = encode(circles_poster(14), ".jpg")
    (default,) = vectors(extractor.extract_batch([data]))
    (cpu,) = vectors(image_cpu.extract_batch([data]))
    assert cosine(default[:1280], cpu[:1280]) > 0.999
    assert np.array_equal(default[1280:], cpu[1280:])


@needs_cuda
def test_image_cuda_matches_cpu(image_cpu):
    inputs = [encode(circles_poster(15), ".jpg"), encode(stripes_poster(16))]
    gpu = vectors(ImageExtractor(device="cuda").extract_batch(inputs))
    cpu = vectors(image_cpu.extract_batch(inputs))
    for g, c in zip(gpu, cpu, strict=True):
        assert cosine(g[:1280], c[:1280]) > 0.999
        assert np.array_equal(g[1280:], c[1280:])
