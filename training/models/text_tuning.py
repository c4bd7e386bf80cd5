"""Fine-tuning the last N layers of a pretrained text or image encoder over a fixed item catalogue.

The frozen bottom of the encoder (embeddings and the first ``L - N`` transformer layers) gives
the same hidden states every step, so :func:`bottom_states` runs it **once** per item; a training
step then runs only the trainable top ``N`` layers, for the items in the batch, followed by the
encoder's own mean pooling and L2 norm. With the top layers unchanged this reproduces
:class:`~training.models.encoders.TextEncoder` exactly (a test checks it on all-MiniLM-L6-v2), so
fine-tuning starts from the pretrained embedding. This is what makes fine-tuning affordable on
CPUs: one layer of MiniLM per step instead of six, and no tokenisation in the loop.

Two ways to train the top layers (``mode``): ``"layers"`` trains all their weights (1.77M per
MiniLM layer); ``"lora"`` keeps them frozen and trains low-rank adapters (LoRA: Hu et al., ICLR 2022,
through Hugging Face ``peft``) on each layer's attention query and value projections only
(``2 x 2 x 384 x r`` weights per layer: 12,288 at r = 8). LoRA's B matrices start at zero, so LoRA
also starts from the pretrained embedding exactly. With ``tune_layers`` = all layers only the
embedding output is cached and every step runs the whole encoder for the batch's candidates.

Plain PyTorch; text: BERT-style encoders whose layers live in ``model.encoder.layer``; images:
torchvision classifiers with a ``features`` stack (:class:`TunedImage`, same idea: the bottom
feature maps are computed once, the last blocks train).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.models.encoders import TextEncoder, freeze_batchnorm

MODES = ("layers", "lora")
LORA_TARGETS = ("query", "value")  # BERT's attention projections that get adapters


def trainable_params(module: nn.Module | None) -> int:
    """Weights of ``module`` that the optimiser updates (``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad) if module is not None else 0


def require_peft():
    """The ``peft`` package, or an error that says how to get it."""
    try:
        import peft
    except ImportError as exc:
        raise ImportError("text_tune_mode 'lora' needs the peft package: pip install 'raycart[peft]'") from exc
    return peft


def add_lora(top: nn.Module, rank: int, alpha: float) -> nn.Module:
    """Freeze ``top`` (BERT layers) and inject trainable LoRA adapters into the attention query and
    value projections of every layer in it (in place; returns it)."""
    peft = require_peft()
    for p in top.parameters():
        p.requires_grad_(False)
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                             target_modules=list(LORA_TARGETS))
    # LoRA draws its A matrices at random: on a forked RNG, so that the ranker built after this
    # starts from the same weights in every mode (a comparison of modes compares the modes)
    with torch.random.fork_rng(devices=[]):
        peft.inject_adapter_in_model(config, top)
    adapters = [name for name, p in top.named_parameters() if p.requires_grad]
    if not adapters or any(".lora_" not in name for name in adapters):
        raise ValueError(f"LoRA found no {'/'.join(LORA_TARGETS)} projections to adapt in the encoder's layers")
    return top


def _layers(encoder: TextEncoder) -> list[nn.Module]:
    try:
        return list(encoder.model.encoder.layer)
    except AttributeError as exc:
        raise ValueError(f"{encoder.config.name_or_path}: last-N-layer tuning needs a BERT-style encoder "
                         "(model.encoder.layer)") from exc


def _run_layer(layer: nn.Module, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
    out = layer(hidden, attention_mask=additive_mask)
    return out[0] if isinstance(out, tuple) else out


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 attention mask -> (B, 1, 1, T) additive mask, as BERT layers take it."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@torch.no_grad()
def bottom_states(encoder: TextEncoder, texts: list[str], tune_layers: int,
                  batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Hidden states after the frozen bottom for every text: ``(N, T, H)`` float32 and the
    ``(N, T)`` attention mask (padded to the longest text, at most ``max_length`` tokens)."""
    layers = _layers(encoder)
    if not 0 < tune_layers <= len(layers):
        raise ValueError(f"tune_layers must be in 1..{len(layers)}, got {tune_layers}")
    encoder.eval()
    tok = encoder.tokenize(texts)
    ids, mask = tok["input_ids"], tok["attention_mask"]
    out = []
    for lo in range(0, len(texts), batch_size):
        m = mask[lo:lo + batch_size]
        h = encoder.model.embeddings(input_ids=ids[lo:lo + batch_size])
        for layer in layers[:len(layers) - tune_layers]:
            h = _run_layer(layer, h, _additive(m, h.dtype))
        out.append(h.float())
    return torch.cat(out).numpy(), mask.numpy().astype(np.int8)


class TunedText(nn.Module):
    """The trainable top of a text encoder over precomputed bottom states of every item: the top
    ``tune_layers`` layers, trained whole (``mode="layers"``) or through LoRA adapters of rank
    ``lora_rank`` (``mode="lora"``)."""

    hidden: torch.Tensor  # buffers: every item's bottom states and attention mask
    mask: torch.Tensor

    def __init__(self, encoder: TextEncoder, hidden: np.ndarray, mask: np.ndarray, tune_layers: int,
                 mode: str = "layers", lora_rank: int = 8, lora_alpha: float = 16.0):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"text fine-tuning mode {mode!r}: choose {' or '.join(MODES)}")
        layers = _layers(encoder)
        if not 0 < tune_layers <= len(layers):
            raise ValueError(f"tune_layers must be in 1..{len(layers)}, got {tune_layers}")
        self.mode = mode
        self.top = nn.ModuleList(copy.deepcopy(layer) for layer in layers[len(layers) - tune_layers:])
        if mode == "lora":
            add_lora(self.top, lora_rank, lora_alpha)
        else:
            for p in self.top.parameters():
                p.requires_grad_(True)
        self.register_buffer("hidden", torch.from_numpy(hidden), persistent=False)
        self.register_buffer("mask", torch.from_numpy(mask.astype(np.int64)), persistent=False)
        self.dim = hidden.shape[-1]

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        """L2-normalised sentence embeddings ``(len(items), H)`` of catalogue items ``items``."""
        h, m = self.hidden[items], self.mask[items]
        # drop the columns that are padding for every text of the batch (exact: padded positions
        # are masked out of attention and pooling; most item texts are far shorter than the longest)
        width = int(m.any(0).nonzero().max()) + 1 if m.any() else 1
        h, m = h[:, :width], m[:, :width]
        for layer in self.top:
            h = _run_layer(layer, h, _additive(m, h.dtype))
        w = m.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * w).sum(1) / w.sum(1).clamp(min=1e-9), dim=-1)

    def embed_all(self, batch_size: int = 256) -> np.ndarray:
        return embed_all(self, len(self.hidden), batch_size)


# -- images -----------------------------------------------------------------------------------------

@torch.no_grad()
def image_bottom_states(encoder, images: list, tune_layers: int, batch_size: int = 32) -> np.ndarray:
    """Feature maps after the frozen bottom of a torchvision image encoder
    (:class:`~training.models.encoders.ImageEncoder`: every block of ``features`` but the last
    ``tune_layers``), ``(N, C, H, W)`` float32; ``images`` are PIL images or ``None`` (zeros)."""
    blocks = list(encoder.features)
    if not 0 < tune_layers <= len(blocks):
        raise ValueError(f"tune_layers must be in 1..{len(blocks)}, got {tune_layers}")
    encoder.eval()
    bottom = nn.Sequential(*blocks[:len(blocks) - tune_layers])
    present = [i for i, img in enumerate(images) if img is not None]
    if not present:
        raise ValueError("no item has an image")
    maps = [bottom(torch.stack([encoder.preprocess(images[i].convert("RGB")) for i in present[lo:lo + batch_size]]))
            for lo in range(0, len(present), batch_size)]
    found = torch.cat(maps)
    out = torch.zeros((len(images), *found.shape[1:]))
    out[present] = found
    return out.numpy()


class TunedImage(nn.Module):
    """The trainable last blocks of an image encoder over precomputed bottom feature maps; output =
    L2-normalised global-average-pooled features, as :class:`ImageEncoder` gives them. Items without
    an image get a zero vector. BatchNorm statistics stay fixed (as in ``ImageEncoder.train``)."""

    states: torch.Tensor  # buffers: every item's bottom feature maps, and whether it has an image
    has_image: torch.Tensor

    def __init__(self, encoder, states: np.ndarray, tune_layers: int, has_image: np.ndarray):
        super().__init__()
        blocks = list(encoder.features)
        self.top = nn.Sequential(*(copy.deepcopy(b) for b in blocks[len(blocks) - tune_layers:]))
        for p in self.top.parameters():
            p.requires_grad_(True)
        self.register_buffer("states", torch.from_numpy(states), persistent=False)
        self.register_buffer("has_image", torch.from_numpy(has_image.astype(np.float32)), persistent=False)
        self.dim = encoder.dim

    def train(self, mode: bool = True):
        super().train(mode)
        freeze_batchnorm(self.top)
        return self

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        x = self.top(self.states[items])
        return F.normalize(F.adaptive_avg_pool2d(x, 1).flatten(1), dim=-1) * self.has_image[items, None]

    def embed_all(self, batch_size: int = 256) -> np.ndarray:
        return embed_all(self, len(self.states), batch_size)


@torch.no_grad()
def embed_all(module: nn.Module, num_items: int, batch_size: int = 256) -> np.ndarray:
    """``module(item ids)`` for every item, in eval mode, as one array (the exported table)."""
    was = module.training
    module.eval()
    out = [module(torch.arange(lo, min(lo + batch_size, num_items))).numpy() for lo in range(0, num_items, batch_size)]
    module.train(was)
    return np.concatenate(out)
