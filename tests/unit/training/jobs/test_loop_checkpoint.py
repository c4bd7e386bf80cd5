"""Training checkpoints load with ``weights_only=True``: what the train loop saves round-trips,
and a pickle that would run code is refused."""

import io
import os

import pytest
import torch

from training.jobs.loop import load_state


def _saved_like_the_train_loop() -> dict:
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 3, "best": 0.25, "bad": 1,
            "best_model": best, "history": [{"epoch": 1, "loss": 2.5, "valid_NDCG@10": 0.1}], "resumes": 0}


def test_the_train_loops_state_round_trips():
    state = _saved_like_the_train_loop()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = load_state(buf)
    assert loaded["epoch"] == 3 and loaded["history"] == state["history"]
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["optim"]["param_groups"][0]["betas"] == state["optim"]["param_groups"][0]["betas"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_that_would_run_code_is_refused():
    buf = io.BytesIO()
    torch.save({"model": {}, "payload": _Evil()}, buf)
    buf.seek(0)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
        load_state(buf)
