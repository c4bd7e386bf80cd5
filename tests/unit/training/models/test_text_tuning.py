"""Last-N-layer fine-tuning of the real all-MiniLM-L6-v2 inside the ranker (no Ray)."""

import numpy as np
import pytest
import torch

from training.models.encoders import TextEncoder, TextEncoderConfig
from training.models.ranker import Ranker, RankerConfig
from training.models.retriever import ItemFeatures
from training.models.text_tuning import TunedText, bottom_states

TEXTS = ["red cotton mug", "a blue wool scarf for cold winter days", "minimal steel watch", "green linen dress",
         "red ceramic mug with a handle", "black leather boots"]


@pytest.fixture(scope="module")
def encoder(shared):
    return TextEncoder(TextEncoderConfig(str(shared / "models/all-MiniLM-L6-v2")))


@pytest.mark.parametrize("layers", [1, 2, 6])
def test_cached_bottom_plus_top_layers_reproduce_the_encoder(encoder, layers):
    hidden, mask = bottom_states(encoder, TEXTS, layers, batch_size=4)
    tuned = TunedText(encoder, hidden, mask, layers)
    np.testing.assert_allclose(tuned.embed_all(), encoder.encode(TEXTS), atol=1e-5)
    assert sum(p.numel() for p in tuned.parameters() if p.requires_grad) > 0


def test_bad_layer_counts_are_refused(encoder):
    for bad in (0, 7):
        with pytest.raises(ValueError, match="tune_layers"):
            bottom_states(encoder, TEXTS, bad)


def test_ranker_fine_tunes_the_top_layer_and_exports_a_table(encoder):
    torch.manual_seed(0)
    n = len(TEXTS)
    feats = ItemFeatures(n, np.ones(n, bool), np.zeros(n + 1, np.int64), np.zeros(0, np.int64), 0)
    cfg = RankerConfig(**{**RankerConfig.tiny().to_dict(), "text_tune_layers": 1, "dropout": 0.0})
    hidden, mask = bottom_states(encoder, TEXTS, 1)
    model = Ranker(cfg, feats, tuned_text=TunedText(encoder, hidden, mask, 1))
    before = {k: v.clone() for k, v in model.tuned.top.state_dict().items()}
    # planted: after a mug, the other mug is right
    hist = torch.tensor([[0], [4]])
    cands = torch.tensor([[4, 1, 2, 3, 5], [0, 1, 2, 3, 5]])
    labels = torch.zeros(2, 5, dtype=torch.bool)
    labels[:, 0] = True
    dense = torch.zeros(2, 5, 6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(hist, cands, dense, labels)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
    changed = [k for k, v in model.tuned.top.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the encoder's top layer did not train"
    model.eval()
    exported = Ranker(cfg, feats, tuned_table=model.tuned.embed_all())
    exported.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("tuned.")},
                             strict=False)
    exported.eval()
    torch.testing.assert_close(exported(hist, cands, dense), model(hist, cands, dense), atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def image_encoder(shared):
    from training.models.encoders import ImageEncoder, ImageEncoderConfig

    return ImageEncoder(ImageEncoderConfig(weights=str(shared / "models/mobilenet_v2-imagenet")))


@pytest.mark.parametrize("layers", [1, 3])
def test_cached_image_bottom_plus_last_blocks_reproduce_the_encoder(image_encoder, layers):
    from PIL import Image

    from training.models.text_tuning import TunedImage, image_bottom_states

    images = [Image.new("RGB", (48, 48), c) for c in ("red", "navy", "yellow")] + [None]
    states = image_bottom_states(image_encoder, images, layers)
    tuned = TunedImage(image_encoder, states, layers, np.array([1, 1, 1, 0]))
    got = tuned.embed_all()
    np.testing.assert_allclose(got[:3], image_encoder.encode(images[:3]), atol=1e-5)
    assert not got[3].any()  # no image, no vector
    tuned.train()
    assert all(not m.training for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm2d))
    loss = tuned(torch.tensor([0, 1])).sum()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tuned.top.parameters())


# -- LoRA (peft) ------------------------------------------------------------------------------------

def _lora_ranker(encoder, layers: int, rank: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    n = len(TEXTS)
    feats = ItemFeatures(n, np.ones(n, bool), np.zeros(n + 1, np.int64), np.zeros(0, np.int64), 0)
    cfg = RankerConfig(**{**RankerConfig.tiny().to_dict(), "text_tune_layers": layers, "text_tune_mode": "lora",
                          "text_lora_rank": rank, "dropout": 0.0})
    hidden, mask = bottom_states(encoder, TEXTS, layers)
    tuned = TunedText(encoder, hidden, mask, layers, cfg.text_tune_mode, cfg.text_lora_rank, cfg.text_lora_alpha)
    return Ranker(cfg, feats, tuned_text=tuned), cfg, feats


def _mug_task():
    """Planted: after a mug, the other mug is right."""
    hist = torch.tensor([[0], [4]])
    cands = torch.tensor([[4, 1, 2, 3, 5], [0, 1, 2, 3, 5]])
    labels = torch.zeros(2, 5, dtype=torch.bool)
    labels[:, 0] = True
    return hist, cands, torch.zeros(2, 5, 6), labels


def _train(model, steps: int = 25):
    hist, cands, dense, labels = _mug_task()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(hist, cands, dense, labels)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("layers", [1, 6])
def test_lora_starts_from_the_encoder_and_only_its_adapters_train(encoder, layers):
    from training.models.text_tuning import trainable_params

    hidden, mask = bottom_states(encoder, TEXTS, layers)
    tuned = TunedText(encoder, hidden, mask, layers, mode="lora", lora_rank=8)
    # LoRA's B starts at zero: the same embedding as the pretrained encoder
    np.testing.assert_allclose(tuned.embed_all(), encoder.encode(TEXTS), atol=1e-5)
    names = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names), names
    assert {n.split(".")[4] for n in names} == {"query", "value"}  # top.<i>.attention.self.<proj>.lora_X...
    # per layer: query and value, each A (r x 384) + B (384 x r)
    assert trainable_params(tuned) == layers * 2 * 2 * 384 * 8
    assert trainable_params(TunedText(encoder, hidden, mask, layers, mode="layers")) > 100 * trainable_params(tuned)


def test_lora_leaves_the_ranker_initialisation_as_in_the_other_modes(encoder):
    hidden, mask = bottom_states(encoder, TEXTS, 1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    TunedText(encoder, hidden, mask, 1, mode="lora")  # draws its adapters on a forked RNG
    assert torch.equal(torch.rand(3), expected)


def test_lora_ranker_trains_the_adapters_and_its_own_weights_not_the_encoder(encoder):
    model, _, _ = _lora_ranker(encoder, layers=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = _train(model)
    assert losses[-1] < 0.5 * losses[0]
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    encoder_changed = {k for k in changed if k.startswith("tuned.")}
    assert encoder_changed and all(".lora_" in k for k in encoder_changed), encoder_changed
    assert any(".lora_B." in k for k in encoder_changed)  # B left zero: the adapters would do nothing
    assert any(k.startswith("tuned_proj.") for k in changed) and any(k.startswith("mlp.") for k in changed)
    frozen = [k for k in before if k.startswith("tuned.") and ".lora_" not in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)


def test_lora_ranker_round_trips_through_a_saved_state_strictly(encoder, tmp_path):
    model, cfg, feats = _lora_ranker(encoder, layers=1)
    _train(model, steps=10)
    model.eval()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    hist, cands, dense, _ = _mug_task()
    # a fresh model of the same config (new random head, zero adapters) loads it strictly
    fresh, _, _ = _lora_ranker(encoder, layers=1, seed=1)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True), strict=True)
    fresh.eval()
    assert torch.equal(fresh(hist, cands, dense), model(hist, cands, dense))
    assert np.abs(fresh.tuned.embed_all() - encoder.encode(TEXTS)).max() > 1e-3  # the adapters came back too
    # another mode's model refuses the state instead of silently dropping the adapters
    hidden, mask = bottom_states(encoder, TEXTS, 1)
    plain = Ranker(RankerConfig(**{**cfg.to_dict(), "text_tune_mode": "layers"}), feats,
                   tuned_text=TunedText(encoder, hidden, mask, 1))
    with pytest.raises(RuntimeError, match="lora_A"):
        plain.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True), strict=True)
    # the exported table gives the same scores as the adapted encoder
    exported = Ranker(cfg, feats, tuned_table=model.tuned.embed_all())
    exported.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("tuned.")},
                             strict=False)
    exported.eval()
    torch.testing.assert_close(exported(hist, cands, dense), model(hist, cands, dense), atol=1e-5, rtol=1e-5)


def test_bad_text_tuning_modes_are_refused(encoder, monkeypatch):
    base = RankerConfig.tiny().to_dict()
    with pytest.raises(ValueError, match="text_tune_mode: 'qlora' is not a text fine-tuning mode"):
        RankerConfig(**{**base, "text_tune_layers": 1, "text_tune_mode": "qlora"})
    with pytest.raises(ValueError, match="'lora' needs text_tune_layers > 0"):
        RankerConfig(**{**base, "text_tune_mode": "lora"})
    with pytest.raises(ValueError, match="text_lora_rank must be >= 1"):
        RankerConfig(**{**base, "text_tune_layers": 1, "text_tune_mode": "lora", "text_lora_rank": 0})
    hidden, mask = bottom_states(encoder, TEXTS, 1)
    with pytest.raises(ValueError, match="mode 'adapters': choose layers or lora"):
        TunedText(encoder, hidden, mask, 1, mode="adapters")
    monkeypatch.setitem(__import__("sys").modules, "peft", None)  # as if peft were not installed
    with pytest.raises(ImportError, match=r"pip install 'raycart\[peft\]'"):
        TunedText(encoder, hidden, mask, 1, mode="lora")


def test_train_ranker_cli_names_a_bad_mode_in_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    raycart = str(Path(sys.executable).with_name("raycart"))
    proc = subprocess.run([raycart, "train", "ranker", "--data", str(tmp_path / "d"), "--retriever", str(tmp_path / "r"),
                           "--out", str(tmp_path / "o"), "--text-tune-layers", "1", "--text-tune-mode", "qlora"],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("raycart: error:"), proc.stderr
    assert "text_tune_mode: 'qlora' is not a text fine-tuning mode (choose layers or lora" in lines[0]
