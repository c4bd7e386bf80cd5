"""The Ray Train plumbing every Raycart model shares (retriever, ranker).

* :func:`run_epochs` runs inside each Ray Train worker: resume from the latest checkpoint, then per
  epoch train, let rank 0 validate (NDCG@10) and broadcast the number so every rank takes the same
  early-stopping decision, keep the best weights, and report metrics + a checkpoint (rank 0) with a
  progress line. A replaced worker (``FailureConfig``) or a rerun of the same run name continues
  from the checkpoint: no epoch is lost or repeated.
* :func:`fit` builds the ``TorchTrainer`` (DDP; rendezvous bound to the node address, see
  :mod:`training.jobs.distributed`), runs it on local or S3 storage and returns the last checkpoint's
  state (``best_model``, ``history``, ``best``, ``resumes``).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch

from training.common import storage
from training.jobs.progress import printing, say

# One epoch's line of a run's history (what Ray Train reports, and what a model card keeps).
EpochRecord = TypedDict("EpochRecord", {"epoch": int, "loss": float, "valid_NDCG@10": float, "seconds": float,
                                        "train_seconds": float, "steps": int, "samples_per_s": float})

# The "run" part of what a training run returns (beside its test metrics) and its model card
# keeps: common keys, then the ranker's own (total=False: each kind fills what it has).
RunSummary = TypedDict("RunSummary", {
    "model": str, "data": str, "scheme": str, "part": str, "workers": int, "gpu": bool, "epochs": int,
    "best_valid_NDCG@10": float, "seconds": float, "resumes": int,
    "source": str,  # the retriever's
    "retriever": str, "epoch_numbers": list[int], "ndcg10_gain_over_retriever": float,  # the ranker's ...
    "eval_seconds": float, "recent_popularity_days": int | None, "trainable_params": dict[str, int],
}, total=False)


class SavedState(TypedDict):
    """A checkpoint's ``state.pt``: plain dicts, lists, numbers and tensors, so it loads with
    ``torch.load(weights_only=True)`` (no pickled classes)."""

    model: dict[str, torch.Tensor]  # the weights after the last epoch run (resume from here)
    optim: dict[str, Any]  # the optimiser's state_dict
    epoch: int  # the last epoch run, 0-based
    best: float  # the best validation NDCG@10 so far
    bad: int  # epochs since it last improved (early stopping)
    best_model: dict[str, torch.Tensor]  # the weights of the best epoch (what is exported)
    history: list[EpochRecord]
    resumes: int  # how often the run continued from a checkpoint


@dataclass(frozen=True)
class LoopSpec:
    tag: str  # progress-line prefix, e.g. "retriever"
    epochs: int
    patience: int
    # a warm start: validate the starting weights first, so that the run returns them unless an epoch
    # beats them (fine-tuning a model already at its best epoch must not export a worse one)
    validate_start: bool = False


def run_epochs(spec: LoopSpec, model: torch.nn.Module, opt: torch.optim.Optimizer,
               train_epoch: Callable[[int], tuple[float, int, int]], validate: Callable[[], float]) -> None:
    """``train_epoch(epoch) -> (mean loss, steps, samples)`` on this worker's shard;
    ``validate() -> NDCG@10`` (called on rank 0 only). ``model`` is the unwrapped module whose
    ``state_dict`` is checkpointed."""
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    start_epoch, best, bad, resumes = 0, -1.0, 0, 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[EpochRecord] = []
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            saved = load_state(Path(d) / "state.pt")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optim"])
        start_epoch, best, bad = saved["epoch"] + 1, saved["best"], saved["bad"]
        best_state, history, resumes = saved["best_model"], saved["history"], saved.get("resumes", 0) + 1
        if rank == 0:
            say(f"[{spec.tag}] resumed from checkpoint after epoch {saved['epoch'] + 1}")
    def validated() -> float:
        metric = torch.zeros(1, device=device)
        if rank == 0:
            model.eval()
            with torch.no_grad():
                metric[0] = validate()
        if world > 1:
            torch.distributed.broadcast(metric, src=0)
        return float(metric.item())

    if ckpt is None and spec.validate_start:
        best = validated()
        best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if rank == 0:
            say(f"[{spec.tag}] warm start: valid NDCG@10 {best:.4f} (kept unless an epoch beats it)")
    for epoch in range(start_epoch, spec.epochs):
        t0 = time.time()
        model.train()
        loss, steps, samples = train_epoch(epoch)
        train_seconds = time.time() - t0
        ndcg = validated()
        if ndcg > best:
            best, bad = ndcg, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        seconds = time.time() - t0
        history.append(EpochRecord({"epoch": epoch + 1, "loss": loss, "valid_NDCG@10": ndcg, "seconds": seconds,
                                    "train_seconds": train_seconds, "steps": steps,
                                    "samples_per_s": samples * world / max(train_seconds, 1e-9)}))
        metrics = {**history[-1], "best_valid_NDCG@10": best}
        if rank == 0:
            eta = seconds * (spec.epochs - epoch - 1)
            say(f"[{spec.tag}] epoch {epoch + 1}/{spec.epochs} loss {loss:.4f} valid NDCG@10 {ndcg:.4f} "
                f"(best {best:.4f}) {seconds:.1f}s/epoch, ETA <= {_eta(eta)}")
            assert best_state is not None  # the first epoch always improves on -1 (or the start was kept)
            with tempfile.TemporaryDirectory() as d:
                state = SavedState(model=model.state_dict(), optim=opt.state_dict(), epoch=epoch, best=best,
                                   bad=bad, best_model=best_state, history=history, resumes=resumes)
                torch.save(state, Path(d) / "state.pt")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)
        if bad >= spec.patience:
            if rank == 0:
                say(f"[{spec.tag}] early stop: no improvement for {spec.patience} epochs")
            break


def _eta(seconds: float) -> str:
    """A time left, readable.

    >>> _eta(42), _eta(200), _eta(7300)
    ('42 s', '3 min', '2.0 h')
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def driver_dataset(columns: dict[str, np.ndarray], blocks: int = 4):
    """A Ray Dataset of the rows of ``columns`` (named arrays of one length; an array of more than
    one dimension becomes a tensor column) whose blocks the driver puts into its own node's object
    store, owned by the driver. ``ray.data.from_numpy`` converts on a worker node instead (a 1-CPU
    task); when that node is lost, Ray re-runs the task to recover the block and the run hangs,
    because the restarted training group holds every CPU that is left."""
    lengths = {len(a) for a in columns.values()}
    if len(lengths) != 1:
        raise ValueError(f"driver_dataset: columns of different lengths {sorted(lengths)}")
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    table = pa.table({name: ArrowTensorArray.from_numpy(a) if a.ndim > 1 else pa.array(a)
                      for name, a in columns.items()})
    return ray.data.from_arrow(table, override_num_blocks=max(1, min(blocks, table.num_rows)))


def fit(train_loop: Callable[[dict], None], inputs: object, *, name: str, storage_path: str, workers: int,
        use_gpu: bool, max_failures: int, datasets: dict, callbacks: list | None = None,
        placement: str = "PACK") -> SavedState:
    """Run ``train_loop`` under a ``TorchTrainer``; return the final checkpoint's saved state.
    ``inputs``: the kind's typed worker inputs, which each worker finds as ``loop_config["inputs"]``
    (Ray Train hands the loop a dict).
    ``callbacks``: Ray Train callbacks, e.g. Tune's ``TuneReportCallback`` inside a sweep trial.
    ``placement``: the workers' placement-group strategy (``STRICT_SPREAD``: one worker per node).
    After a worker (or its node) is lost, the group restarts in a new placement group on the
    nodes that remain -- or waits, retrying, until the cluster has room (a replacement node) --
    and resumes from the last checkpoint."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from training.jobs.distributed import BoundTorchConfig

    fs, path = storage.resolve(storage_path)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"inputs": inputs},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu, placement_strategy=placement),
        torch_config=BoundTorchConfig(),  # rendezvous store on the node address, not every interface
        run_config=RunConfig(name=name, storage_path=path,
                             storage_filesystem=fs if storage.is_s3(storage_path) else None,
                             failure_config=FailureConfig(max_failures=max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks or None),
        datasets=datasets,
    )
    with printing(name):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training produced no checkpoint ({result.error})")
    with result.checkpoint.as_directory() as d:
        return load_state(Path(d) / "state.pt")


def load_state(source) -> SavedState:
    """A checkpoint's ``state.pt`` (a path or a file object) with ``weights_only=True``: tensors and
    plain data (numbers, strings, lists, dicts, tuples) only, so whoever can write the checkpoint
    prefix cannot make the loader run code (a full unpickle would)."""
    return cast(SavedState, torch.load(source, map_location="cpu", weights_only=True))


def load_checkpoint_state(uri: str) -> SavedState:
    """The saved state (``state.pt``) of a checkpoint directory, local or ``s3://``."""
    import io

    return load_state(io.BytesIO(storage.read_bytes(storage.join(uri, "state.pt"))))


def plot_learning_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(epochs, [h["loss"] for h in history], color="tab:blue", label="training loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h["valid_NDCG@10"] for h in history], color="tab:red", label="valid NDCG@10")
    ax2.set_ylabel("validation NDCG@10", color="tab:red")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
