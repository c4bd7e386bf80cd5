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
