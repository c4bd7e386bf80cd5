"""Pretrained content encoders: a Hugging Face text encoder and a torchvision image encoder.

Both take a hub id / weights enum **or** a local directory, so the same configuration works
on a machine with internet and on one that reads ``../shared/models``. Missing weights are an
error that names the path, never a silent random initialisation.

Modes (``trainable_layers``): ``0`` frozen (features can be precomputed once), ``n > 0`` the
last ``n`` blocks train, ``-1`` everything trains.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.common.errors import DataError


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


@dataclass(frozen=True)
class TextEncoderConfig:
    name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2"
    max_length: int = 64
    trainable_layers: int = 0

    def resolved(self) -> TextEncoderConfig:
        """The same config with a local folder made absolute (Ray Train runs workers in their own
        working directory, where a relative path means something else)."""
        if _looks_like_path(self.name_or_path):
            return dataclasses.replace(self, name_or_path=str(Path(self.name_or_path).expanduser().resolve()))
        return self


class TextEncoder(nn.Module):
    """Sentence embeddings: mean of the last hidden states over the attention mask, L2-normalised
    (the sentence-transformers recipe for all-MiniLM-L6-v2).

    >>> # enc = TextEncoder(TextEncoderConfig("../shared/models/all-MiniLM-L6-v2"))
    >>> # enc.encode(["red mug"]).shape  -> (1, 384)
    """

    def __init__(self, config: TextEncoderConfig = TextEncoderConfig()):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.config = config
        name = config.name_or_path
        local = _looks_like_path(name)
        if local and not (Path(name).expanduser() / "config.json").exists():
            raise DataError(f"{name}: text encoder not found (expected a Hugging Face model folder "
                            f"with config.json; get sentence-transformers/all-MiniLM-L6-v2)")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
            self.model = AutoModel.from_pretrained(name, local_files_only=local)
        except OSError as exc:
            raise DataError(f"{name}: cannot load the text encoder ({str(exc).splitlines()[0]})") from exc
        self.dim = int(self.model.config.hidden_size)
        _set_trainable(list(self.model.encoder.layer), self.model, config.trainable_layers)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.config.max_length,
                              return_tensors="pt")

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Tokenise ``texts`` onto the model's device and return their embeddings."""
        device = next(self.model.parameters()).device
        tok = self.tokenize(texts)
        return self(tok["input_ids"].to(device), tok["attention_mask"].to(device))

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        self.eval()
        out = [self.embed(texts[i:i + batch_size]).float().cpu().numpy() for i in range(0, len(texts), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


@dataclass(frozen=True)
class ImageEncoderConfig:
    arch: str = "mobilenet_v2"
    weights: str = "DEFAULT"  # a torchvision weights enum name, or a local folder with meta.json
    trainable_layers: int = 0

    def resolved(self) -> ImageEncoderConfig:
        """The same config with a local weights folder made absolute (see TextEncoderConfig)."""
        if _looks_like_path(self.weights):
            return dataclasses.replace(self, weights=str(Path(self.weights).expanduser().resolve()))
        return self


def _tf_same_pad(module: nn.Module, args):
    # TF "SAME" padding for a 3x3 stride-2 conv: the extra pixel goes bottom/right
    # (see ../shared/models/mobilenet_v2-imagenet/README.md).
    x = args[0]
    ih, iw = x.shape[-2:]
    ph = max((-(-ih // 2) - 1) * 2 + 3 - ih, 0)
    pw = max((-(-iw // 2) - 1) * 2 + 3 - iw, 0)
    return (F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)),)


def tf_same_padding_(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
            m.padding = (0, 0)
            m.register_forward_pre_hook(_tf_same_pad)
    return model


class ImageEncoder(nn.Module):
    """Pooled convolutional features of a torchvision classifier (1280-d for MobileNetV2),
    L2-normalised. A local weights folder brings its own preprocessing in ``meta.json``."""

    def __init__(self, config: ImageEncoderConfig = ImageEncoderConfig()):
        super().__init__()
        import torchvision
        from torchvision import transforms as T

        self.config = config
        mean, std, resize, crop = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 256, 224
        if _looks_like_path(config.weights):
            folder = Path(config.weights).expanduser()
            meta_path = folder / "meta.json"
            if not meta_path.exists():
                raise DataError(f"{folder}: image encoder weights not found (expected meta.json and the "
                                f"state_dict it names)")
            meta = json.loads(meta_path.read_text())
            weights_path = folder / meta.get("weights", "weights.pth")
            if not weights_path.exists():
                raise DataError(f"{weights_path}: image encoder weights not found")
            model = torchvision.models.get_model(meta.get("arch", config.arch), weights=None,
                                                 num_classes=meta.get("num_classes", 1000))
            model.load_state_dict(torch.load(weights_path, weights_only=True, map_location="cpu"))
            if meta.get("padding") == "tf_same":
                tf_same_padding_(model)
            mean, std = meta["normalize"]["mean"], meta["normalize"]["std"]
            resize, crop = meta.get("resize", resize), meta.get("crop", crop)
        else:
            try:
                model = torchvision.models.get_model(config.arch, weights=config.weights)
            except Exception as exc:  # unknown enum, or no internet for the download
                raise DataError(f"image encoder {config.arch} weights {config.weights!r} unavailable "
                                f"({str(exc).splitlines()[0]}); pass a local weights folder") from exc
        self.features = model.features
        self.dim = int(model.classifier[-1].in_features)
        self.preprocess = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])
        _set_trainable(list(self.features), self.features, config.trainable_layers)

    def train(self, mode: bool = True):
        super().train(mode)
        freeze_batchnorm(self.features)
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.features(pixels)
        return F.normalize(F.adaptive_avg_pool2d(x, 1).flatten(1), dim=-1)

    @torch.no_grad()
    def encode(self, images: list, batch_size: int = 32) -> np.ndarray:
        """Encode PIL images (RGB)."""
        self.eval()
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(img.convert("RGB")) for img in images[i:i + batch_size]])
            out.append(self(batch).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep BatchNorm statistics fixed when fine-tuning (the shared weights have BN folded into the
    convolutions, and recommendation batches of images are small)."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


def _set_trainable(blocks: list[nn.Module], whole: nn.Module, trainable_layers: int) -> None:
    whole.requires_grad_(trainable_layers < 0)
    if trainable_layers > 0:
        for block in blocks[-trainable_layers:]:
            block.requires_grad_(True)
