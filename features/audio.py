"""Trailer audio to a fixed-length vector of librosa summary statistics (timbre, pitch class, brightness,
texture, loudness, tempo, length).

What it is for: a cheap, model-free description of how a trailer *sounds*, so items whose soundtracks
are alike (pitch register, timbre, pace) end up close. It runs on CPU only: `device` is accepted for
the registry's uniform constructor and ignored.

What it must never do: raise for one bad file (a corrupt, empty, silent or too-short clip comes back as a
failed `Extraction` with one of the fixed phrases below), read more than the first `MAX_SECONDS` of a
clip, or depend on anything but the bytes (same bytes, same vector). Nothing here imports pyspark.

Pipeline: decode with soundfile from memory (whatever this libsndfile reads: WAV, FLAC, OGG/Vorbis,
Opus, MP3, AIFF, ...), mix to mono by averaging channels, keep the first 60 s, resample to 22,050 Hz
with soxr (`soxr_hq`), then frame with n_fft 2048, hop 512 (librosa's defaults).

Vector layout (`AudioExtractor.dim` = 111, float32), frame statistics over the analysed clip:

    [0:20]     MFCC 1..20 means (librosa.feature.mfcc, 128 mel bands, dB scale; index 0 is loudness-like)
    [20:40]    MFCC stds
    [40:60]    delta-MFCC means (librosa.feature.delta, width 9, or the largest odd width the clip allows)
    [60:80]    delta-MFCC stds
    [80:92]    chroma (chroma_stft, C, C#, ..., B) means, each frame max-normalised to 1
    [92]       spectral centroid mean, kHz        [93] its std, kHz
    [94]       spectral bandwidth mean, kHz       [95] its std, kHz
    [96]       spectral roll-off (85 %) mean, kHz  [97] its std, kHz
    [98:105]   spectral contrast means, 7 bands (6 octave bands from 200 Hz plus the rest), dB
    [105]      zero-crossing rate mean (crossings per sample)    [106] its std
    [107]      RMS mean (full scale = 1)                          [108] its std
    [109]      tempo / 200 (librosa.feature.tempo on the onset envelope, BPM, prior centred on 120)
    [110]      duration / 60: the whole file's length in minutes, not only the analysed part

Frequencies are in kHz (not normalised by Nyquist) because every clip is resampled to the same rate
first, so kHz and "fraction of Nyquist" differ only by a constant and kHz reads directly: a 440 Hz sine
gives [92] = 0.44.

Meta per result: `duration` (seconds, whole file), `analysed_seconds` (at most 60), `sample_rate` (the
file's own), `channels`, `tempo` (BPM).

Failure phrases (fixed, so quarantine groups by reason): EMPTY "empty file" (no bytes or None),
UNDECODABLE "undecodable audio" (libsndfile cannot open or read it, including a WAV cut inside its header
so no sample is left, and float samples that are not finite numbers; a WAV cut inside its data decodes
the samples that are there), TOO_SHORT "audio too short" (under 0.1 s), TOO_FAST "audio sample rate too high" (over `max_sample_rate`,
192 kHz by default, from the header before any sample is read), SILENT "silent audio" (peak amplitude under 1e-4), FEATURE_ERROR "audio feature
error" (librosa failed on decoded audio: a bug or an input nobody foresaw; logged with its traceback).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import soundfile

from features.base import Extraction, Extractor, expect_array

log = logging.getLogger("modalrank.audio")

EMPTY = "empty file"
UNDECODABLE = "undecodable audio"
SILENT = "silent audio"
TOO_SHORT = "audio too short"
FEATURE_ERROR = "audio feature error"
TOO_FAST = "audio sample rate too high"

SAMPLE_RATE = 22_050
MAX_SECONDS = 60.0
# With MAX_SECONDS this bounds the samples one clip's decode reads (a header may claim any rate).
MAX_SAMPLE_RATE = 192_000
MIN_SECONDS = 0.1
SILENCE_PEAK = 1e-4
N_MFCC = 20
N_FFT = 2048
HOP_LENGTH = 512
DELTA_WIDTH = 9
TEMPO_SCALE = 200.0
DURATION_SCALE = 60.0

# Layout offsets; the docstring's table is the contract, these only name it.
MFCC_MEAN = slice(0, 20)
MFCC_STD = slice(20, 40)
DELTA_MEAN = slice(40, 60)
DELTA_STD = slice(60, 80)
CHROMA_MEAN = slice(80, 92)
CENTROID_MEAN, CENTROID_STD = 92, 93
BANDWIDTH_MEAN, BANDWIDTH_STD = 94, 95
ROLLOFF_MEAN, ROLLOFF_STD = 96, 97
CONTRAST_MEAN = slice(98, 105)
ZCR_MEAN, ZCR_STD = 105, 106
RMS_MEAN, RMS_STD = 107, 108
TEMPO = 109
DURATION = 110
DIM = 111


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # mono float32 at the file's own rate, at most MAX_SECONDS long
    sample_rate: int
    channels: int
    duration: float  # seconds, the whole file


class AudioExtractor(Extractor[DecodedAudio]):
    """librosa summary statistics of a clip's first minute; see the module docstring for the layout."""

    modality = "audio"
    name = "librosa-summary"
    version = "1"
    dim = DIM

    def __init__(
        self, device: str | None = None, max_seconds: float = MAX_SECONDS, max_sample_rate: int = MAX_SAMPLE_RATE
    ) -> None:
        super().__init__()
        self.max_seconds = float(max_seconds)
        self.max_sample_rate = int(max_sample_rate)
        # librosa is CPU-only; the argument exists so the registry can build every extractor alike.
        self.device = "cpu"

    def warm_up(self) -> None:
        """Run the whole pipeline once on a synthetic tone: librosa's first call JIT-compiles (numba)
        for ~15-20 s, which should happen once per worker, not inside the first timed batch."""
        t = np.arange(int(SAMPLE_RATE * 1.0)) / SAMPLE_RATE
        tone = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
        # Through resampling too: soxr and librosa's resample wrapper have their own first-call costs.
        audio_features(librosa_resample(tone, SAMPLE_RATE * 2, SAMPLE_RATE))
        audio_features(tone)

    def extract_batch(self, inputs: Sequence[bytes | str]) -> list[Extraction]:
        return self.decode_then_extract(inputs)

    def decode(self, data: object) -> DecodedAudio | Extraction:
        """libsndfile's half (the risky one, on untrusted bytes): `decode_audio`."""
        return decode_audio(data, self.max_seconds, self.max_sample_rate)

    def decoded_to_arrays(self, decoded: DecodedAudio) -> tuple[dict[str, object], list[np.ndarray]]:
        fields: dict[str, object] = {
            "sample_rate": decoded.sample_rate,
            "channels": decoded.channels,
            "duration": decoded.duration,
        }
        return fields, [decoded.samples]

    def decoded_from_arrays(self, fields: dict[str, object], arrays: list[np.ndarray]) -> DecodedAudio:
        (samples,) = arrays
        expect_array(samples, np.float32, 1, "decoded audio")
        sample_rate, channels, duration = (fields["sample_rate"], fields["channels"], fields["duration"])
        if not (isinstance(sample_rate, int) and isinstance(channels, int) and isinstance(duration, int | float)):
            raise ValueError("decoded audio: sample_rate and channels must be whole numbers, duration a number")
        if sample_rate <= 0 or channels <= 0 or not math.isfinite(duration):
            raise ValueError(f"decoded audio: rate {sample_rate}, {channels} channels, {duration} s")
        return DecodedAudio(samples, sample_rate, channels, float(duration))

    def extract_decoded(self, decoded: Sequence[DecodedAudio]) -> list[Extraction]:
        return [self._features_of(clip) for clip in decoded]

    def _features_of(self, decoded: DecodedAudio) -> Extraction:
        self.inferences += 1
        try:
            samples = decoded.samples
            if decoded.sample_rate != SAMPLE_RATE:
                samples = librosa_resample(samples, decoded.sample_rate, SAMPLE_RATE)
            features, tempo = audio_features(samples)
        except Exception:
            log.exception("librosa failed on a decoded clip (%.2f s)", decoded.duration)
            return Extraction.failed(FEATURE_ERROR)
        features[DURATION] = decoded.duration / DURATION_SCALE
        meta = {
            "duration": decoded.duration,
            "analysed_seconds": len(decoded.samples) / decoded.sample_rate,
            "sample_rate": float(decoded.sample_rate),
            "channels": float(decoded.channels),
            "tempo": tempo,
        }
        return self._vector(features, meta)


def decode_audio(
    value: object, max_seconds: float = MAX_SECONDS, max_sample_rate: int = MAX_SAMPLE_RATE
) -> DecodedAudio | Extraction:
    """The clip's first `max_seconds` as mono float32 at its own rate, or the failure that explains why
    not; a rate over `max_sample_rate` is refused before any sample is read."""
    if value is None or (isinstance(value, bytes | bytearray | memoryview) and len(value) == 0):
        return Extraction.failed(EMPTY)
    if not isinstance(value, bytes | bytearray | memoryview):
        return Extraction.failed(UNDECODABLE)
    try:
        with soundfile.SoundFile(io.BytesIO(bytes(value))) as handle:
            sample_rate, channels, total_frames = handle.samplerate, handle.channels, handle.frames
            if sample_rate > max_sample_rate:
                return Extraction.failed(TOO_FAST)
            wanted = min(total_frames, math.ceil(max_seconds * sample_rate))
            samples = handle.read(frames=wanted, dtype="float32", always_2d=True)
    except Exception as error:  # libsndfile's errors, and whatever a hostile header makes it raise
        log.debug("undecodable audio: %s", error)
        return Extraction.failed(UNDECODABLE)
    if samples.shape[0] == 0 or sample_rate <= 0:
        # A header without samples: typically a file cut inside its header.
        return Extraction.failed(UNDECODABLE)
    # A truncated file can report more frames than it has; the duration counts what actually decoded.
    frames = total_frames if samples.shape[0] == wanted else samples.shape[0]
    duration = frames / sample_rate
    mono = samples.mean(axis=1, dtype=np.float32) if channels > 1 else samples[:, 0]
    if mono.shape[0] / sample_rate < MIN_SECONDS:
        return Extraction.failed(TOO_SHORT)
    if not np.all(np.isfinite(mono)) or float(np.max(np.abs(mono))) < SILENCE_PEAK:
        # Non-finite samples (a float WAV full of NaN) carry no signal either.
        return Extraction.failed(SILENT if np.all(np.isfinite(mono)) else UNDECODABLE)
    return DecodedAudio(np.ascontiguousarray(mono), int(sample_rate), int(channels), float(duration))


def librosa_resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    import librosa

    return librosa.resample(samples, orig_sr=from_rate, target_sr=to_rate, res_type="soxr_hq").astype(np.float32)


def audio_features(samples: np.ndarray) -> tuple[np.ndarray, float]:
    """(the DIM-long feature vector with the duration slot left 0, tempo in BPM) of mono SAMPLE_RATE audio."""
    import librosa

    sr = SAMPLE_RATE
    # One magnitude STFT feeds every spectral feature, so they all see the same frames.
    magnitude = np.abs(librosa.stft(samples, n_fft=N_FFT, hop_length=HOP_LENGTH))
    power = magnitude**2
    mel = librosa.feature.melspectrogram(S=power, sr=sr)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=N_MFCC)
    frames = mfcc.shape[1]
    # delta's Savitzky-Golay window must fit in the clip: a 0.1 s clip has only 5 frames.
    width = min(DELTA_WIDTH, frames if frames % 2 else frames - 1)
    delta = librosa.feature.delta(mfcc, width=width) if width >= 3 else np.zeros_like(mfcc)
    chroma = librosa.feature.chroma_stft(S=power, sr=sr)
    centroid = librosa.feature.spectral_centroid(S=magnitude, sr=sr)[0] / 1000.0
    bandwidth = librosa.feature.spectral_bandwidth(S=magnitude, sr=sr)[0] / 1000.0
    rolloff = librosa.feature.spectral_rolloff(S=magnitude, sr=sr, roll_percent=0.85)[0] / 1000.0
    contrast = librosa.feature.spectral_contrast(S=magnitude, sr=sr)
    zcr = librosa.feature.zero_crossing_rate(samples, frame_length=N_FFT, hop_length=HOP_LENGTH)[0]
    rms = librosa.feature.rms(S=magnitude, frame_length=N_FFT, hop_length=HOP_LENGTH)[0]
    onset_envelope = librosa.onset.onset_strength(S=librosa.power_to_db(mel), sr=sr, hop_length=HOP_LENGTH)
    tempo = float(librosa.feature.tempo(onset_envelope=onset_envelope, sr=sr, hop_length=HOP_LENGTH)[0])

    vector = np.zeros(DIM, dtype=np.float64)
    vector[MFCC_MEAN], vector[MFCC_STD] = mfcc.mean(axis=1), mfcc.std(axis=1)
    vector[DELTA_MEAN], vector[DELTA_STD] = delta.mean(axis=1), delta.std(axis=1)
    vector[CHROMA_MEAN] = chroma.mean(axis=1)
    vector[CENTROID_MEAN], vector[CENTROID_STD] = centroid.mean(), centroid.std()
    vector[BANDWIDTH_MEAN], vector[BANDWIDTH_STD] = bandwidth.mean(), bandwidth.std()
    vector[ROLLOFF_MEAN], vector[ROLLOFF_STD] = rolloff.mean(), rolloff.std()
    vector[CONTRAST_MEAN] = contrast.mean(axis=1)
    vector[ZCR_MEAN], vector[ZCR_STD] = zcr.mean(), zcr.std()
    vector[RMS_MEAN], vector[RMS_STD] = rms.mean(), rms.std()
    vector[TEMPO] = tempo / TEMPO_SCALE
    return vector, tempo
