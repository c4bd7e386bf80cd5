"""Ray Tune sweeps over the retriever or the ranker, with ASHA early stopping.

Each trial is a function that builds the trial's ``TorchTrainer`` through the same
``train_retriever`` / ``train_ranker`` that ``raycart train`` runs, and forwards every epoch's
validation NDCG@10 to Tune with ``TuneReportCallback`` (Ray 2.60 refuses ``Tuner(TorchTrainer)``).
ASHA stops the weak trials at its rungs; trials that run to the end export a model directory.
The sweep then writes a table of all trials (CSV + Parquet), a plot of validation NDCG@10 against
time for every trial, and copies the best trial's model directory to ``out`` -- which
``raycart evaluate`` and ``raycart serve`` load directly.

A sweep is resumable: rerunning the same job after the driver died restores it with
``Tuner.restore`` (unfinished trials continue, and their Ray Train runs resume from their last
checkpoint). Storage may be local or ``s3://``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.common import storage
from training.common.errors import DataError
from training.jobs.config_file import write_config
from training.models.kinds import trainer
from training.models.retriever_config import RetrieverConfig
from tuning.search import check_search, first_points, make_search
from tuning.space import grid_size, read_space, to_tune

log = logging.getLogger(__name__)

METRIC = "valid_NDCG@10"


@dataclass(frozen=True)
class SweepJob:
    kind: str  # "retriever" | "ranker"
    data: str
    space: str  # YAML file (tuning/space.py)
    out: str  # where the best trial's model directory goes
    samples: int = 16
    max_concurrent: int = 2
    scheduler: str = "asha"  # "asha" | "fifo" (no early stopping: the baseline for compute saved)
    search: str = "random"  # "random" | "optuna" (TPE; tuning/search.py)
    storage: str = "raycart-work/tune"
    name: str | None = None  # default: kind + a hash of the job
    epochs: int = 8  # budget per trial (ASHA's max_t)
    grace_period: int = 1
    reduction_factor: int = 2
    workers_per_trial: int = 1
    retriever: str | None = None  # ranker sweeps: the retriever directory it reranks
    scheme: str = "loo"
    valid_users: int = 0  # retriever: validation sample per epoch (0 = all)
    base: dict = field(default_factory=dict)  # fixed config values under the space
    seed: int = 0

    @classmethod
    def tiny(cls, data: str, out: str, storage_dir: str, **kw) -> SweepJob:
        """The smoke sweep: 4 trials of a tiny retriever, 4 epochs each (about a minute here)."""
        space = str(Path(__file__).parent / "spaces" / "smoke.yaml")
        return cls(**{"kind": "retriever", "data": data, "space": space, "out": out, "samples": 4, "epochs": 4,
                      "reduction_factor": 3, "storage": storage_dir,
                      "base": {**RetrieverConfig.tiny().to_dict(), "batch_size": 64}, **kw})

    @property
    def sweep_name(self) -> str:
        if self.name:
            return self.name
        key = json.dumps({k: v for k, v in dataclasses.asdict(self).items() if k not in ("out", "storage", "name")},
                         sort_keys=True) + Path(self.space).read_text()
        return f"{self.kind}-sweep-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def check_job(job: SweepJob) -> tuple[dict, dict]:
    """Validate before Ray starts; returns the space spec and the defaults."""
    t = trainer(job.kind)
    if not storage.exists(storage.join(job.data, "dataset.json")):
        raise DataError(f"--data: {job.data}: not a prepared Raycart dataset (no dataset.json)")
    for name, _ in t.inputs:  # the model directories the kind needs (a ranker: its retriever)
        path = getattr(job, name, None)
        if not (path and storage.exists(storage.join(path, "model.json"))):
            raise DataError(f"--{name}: {path}: a {job.kind} sweep needs a {name} model directory")
    if job.scheduler not in ("asha", "fifo"):
        raise DataError(f"--scheduler: {job.scheduler!r} (choose asha or fifo)")
    check_search(job.search)
    if job.samples < 1 or job.epochs < 1 or job.max_concurrent < 1:
        raise DataError("--samples, --epochs and --max-concurrent must be at least 1")
    config_cls = t.config_cls()
    spec, defaults = read_space(job.space, config_cls)
    first_points(job.search, spec, defaults)  # Optuna's first trial needs every sampled field
    fields = {f.name for f in dataclasses.fields(config_cls)}
    bad = [k for k in job.base if k not in fields]
    if bad:
        raise DataError(f"base config: unknown {config_cls.__name__} field(s) {bad}")
    return spec, defaults


def _model_dir(job: SweepJob, trial_id: str) -> str:
    """Where a trial's model directory goes (the trial, or the driver for the best one)."""
    return storage.join(job.storage, job.sweep_name, "models", trial_id)


def _trial_job(job: SweepJob, config: dict, trial_id: str):
    """The training job of one trial (the same in the trial and when the driver exports it)."""
    name = job.sweep_name
    # the sweep's scheduler does the early stopping (patience = the whole budget)
    t = trainer(job.kind)
    model = t.config_cls()(**{**job.base, **config, "epochs": job.epochs, "patience": job.epochs})
    values = {"data": job.data, "out": _model_dir(job, trial_id), "model": model,
              "scheme": job.scheme, "workers": job.workers_per_trial,
              "storage": storage.join(job.storage, name, "train"),
              "name": f"{name}-{trial_id}", "overwrite": True,
              # what some kinds take: a retriever's validation sample and embedding cache, a ranker's retriever
              "valid_users": job.valid_users, "cache_dir": storage.join(job.storage, "cache"),
              **{input_name: getattr(job, input_name) for input_name, _ in t.inputs}}
    fields = t.job_fields()
    return t.job_cls()(**{k: v for k, v in values.items() if k in fields})


def _trial(config: dict, job: SweepJob) -> None:
    """One trial: train with this config, reporting each epoch to Tune; a trial that runs to the
    end exports its model (ASHA may stop it at its last report: the driver then exports it from
    its checkpoint, see :func:`_export_best`)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    tjob = _trial_job(job, config, tune.get_context().get_trial_id())
    trainer(job.kind).run_train(tjob, callbacks=[TuneReportCallback()])


def _tuner(job: SweepJob, spec: dict, defaults: dict):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from tuning.progress import TrialLines, tune_verbosity

    verbosity = tune_verbosity()  # before a restore too: the restored sweep reports through Tune's reporter
    # the trial function only waits on its TorchTrainer, whose workers hold the CPUs: it asks for no CPU
    # (a request must not be empty, hence the token memory)
    trainable = tune.with_resources(tune.with_parameters(_trial, job=job), {"cpu": 0, "memory": 1})
    fs, path = storage.resolve(job.storage)
    exp_uri = storage.join(job.storage, job.sweep_name)
    fs_arg = fs if storage.is_s3(job.storage) else None
    if storage.exists(storage.join(exp_uri, "tuner.pkl")):
        log.info(f"[tune] resuming sweep '{job.sweep_name}' from {exp_uri} (Tuner.restore)")
        return tune.Tuner.restore(f"{path}/{job.sweep_name}", trainable=trainable, resume_unfinished=True,
                                  resume_errored=True, storage_filesystem=fs_arg)
    search = make_search(job.search, spec, defaults, job.seed, job.max_concurrent)
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=job.epochs, grace_period=job.grace_period,
                               reduction_factor=job.reduction_factor) if job.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable, param_space=to_tune(spec),
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=job.samples, search_alg=search,
                                    scheduler=scheduler),
        # one line per trial event (tuning.progress) instead of Tune's status tables
        run_config=tune.RunConfig(name=job.sweep_name, storage_path=path, storage_filesystem=fs_arg,
                                  failure_config=tune.FailureConfig(max_failures=1), verbose=verbosity,
                                  callbacks=[TrialLines(METRIC, job.epochs, job.samples)]))


def run_sweep(job: SweepJob) -> dict:
    """Run (or resume) the sweep; write the trials table and plot; export the best model."""
    # trials run in their own working directories: local paths must not be relative
    job = dataclasses.replace(job, data=storage.absolute(job.data), space=storage.absolute(job.space),
                              out=storage.absolute(job.out), storage=storage.absolute(job.storage),
                              retriever=job.retriever and storage.absolute(job.retriever))
    spec, defaults = check_job(job)
    from training.common.ray_env import init_ray

    init_ray(dashboard=True)  # see init_ray: ASHA-stopped trials release their workers
    start = time.time()
    log.info(f"[tune] {job.kind} sweep '{job.sweep_name}': {job.samples} trials x <= {job.epochs} epochs, "
          f"{job.max_concurrent} at a time, scheduler {job.scheduler}, search {job.search}")
    grid = _tuner(job, spec, defaults).fit()
    rows, curves = _trials(job, grid, spec, defaults)
    if not rows:
        raise RuntimeError("the sweep produced no trial results")
    best = max(rows, key=lambda r: r["best_valid_NDCG@10"])
    _export_best(job, best)
    run = sum(r["epochs"] for r in rows)
    full = len(rows) * job.epochs
    grid_points = grid_size(spec)
    default_row = next((r for r in rows if r["hand_set"]), None)
    summary = {
        "sweep": job.sweep_name, "kind": job.kind, "data": job.data, "trials": len(rows),
        "stopped_early": sum(1 for r in rows if r["stopped_early"]), "trial_epochs_run": run,
        "trial_epochs_without_asha": full, "compute_saved": 1 - run / full,
        "full_grid_trial_epochs": grid_points * job.epochs if grid_points else None,
        "best": {k: best[k] for k in ("trial_id", "best_valid_NDCG@10", "test_NDCG@10", "test_HR@10", "config")},
        "hand_set": ({k: default_row[k] for k in ("trial_id", "best_valid_NDCG@10", "test_NDCG@10", "epochs")}
                     if default_row else None),
        "exported": job.out, "seconds": round(time.time() - start, 1)}
    exp = storage.join(job.storage, job.sweep_name)
    summary["best_yaml"] = storage.join(exp, "best.yaml")
    _write_outputs(exp, rows, curves, summary, best_config(job, best))
    _print(rows, summary)
    return summary


def best_config(job: SweepJob, best: dict):
    """The best trial as a training configuration file's section (``best.yaml``, read by
    ``raycart train KIND --config`` and ``raycart demo --config``): the sweep's fixed values, the
    trial's, the sweep's epoch budget and a patience to go with it."""
    from training.jobs.config_file import KindConfig

    model = {**job.base, **best["config"], "epochs": job.epochs, "patience": max(2, job.epochs // 4)}
    run = {"scheme": job.scheme, **({"valid_users": job.valid_users}
                                    if "valid_users" in dict(trainer(job.kind).run_settings) else {})}
    return {job.kind: KindConfig(model=model, run=run)}


def _trials(job: SweepJob, grid, spec: dict, defaults: dict) -> tuple[list[dict], dict]:
    from training.inference.modeldir import read_card

    rows, curves = [], {}
    keys = list(spec)
    for result in grid:
        df = result.metrics_dataframe
        if df is None or METRIC not in df:
            continue
        trial_id = str(df["trial_id"].iloc[-1])
        model_dir = _model_dir(job, trial_id)
        done = storage.exists(storage.join(model_dir, "model.json"))
        test = read_card(model_dir).metrics if done else {}
        cfg = {k: result.config.get(k) for k in keys}
        epochs = int(df["training_iteration"].max())
        rows.append({"trial_id": trial_id, **{f"config/{k}": v for k, v in cfg.items()}, "config": cfg,
                     "epochs": epochs, "stopped_early": epochs < job.epochs,
                     "best_valid_NDCG@10": float(df[METRIC].max()), "last_valid_NDCG@10": float(df[METRIC].iloc[-1]),
                     "test_NDCG@10": test.get("NDCG@10"), "test_HR@10": test.get("HR@10"),
                     "hand_set": bool(defaults) and all(cfg.get(k) == v for k, v in defaults.items() if k in cfg),
                     "error": str(result.error)[:200] if result.error else None,
                     "model_dir": model_dir if done else None})
        if "checkpoint_path" in df:
            ckpt = df["checkpoint_path"].dropna()
            rows[-1]["checkpoint"] = str(ckpt.iloc[-1]) if len(ckpt) else None
        curves[trial_id] = {"t": df["timestamp"].astype(float).tolist(), METRIC: df[METRIC].astype(float).tolist()}
    return rows, curves


def _export_best(job: SweepJob, best: dict) -> None:
    """Put the best trial's model directory at ``job.out``: a copy of the one it exported, or --
    when ASHA stopped it at its last report, before it could export -- made from its last
    checkpoint (which holds its best state) with the same export code as ``raycart train``."""
    import pyarrow.fs as pafs

    from training.inference.modeldir import read_card
    from training.jobs.loop import load_checkpoint_state

    if best["model_dir"] is None:
        if not best.get("checkpoint"):
            raise RuntimeError(f"trial {best['trial_id']}: no checkpoint to export")
        ckpt = best["checkpoint"]
        if storage.is_s3(job.storage) and not storage.is_s3(ckpt):
            ckpt = "s3://" + ckpt.lstrip("/")
        tjob = _trial_job(job, best["config"], best["trial_id"])
        log.info(f"[tune] exporting trial {best['trial_id']} from its checkpoint {ckpt}")
        state = load_checkpoint_state(ckpt)
        trainer(job.kind).run_export(tjob, state)
        best["model_dir"] = tjob.out
        metrics = read_card(tjob.out).metrics
        best["test_NDCG@10"], best["test_HR@10"] = metrics["NDCG@10"], metrics["HR@10"]
    sfs, spath = storage.resolve(best["model_dir"])
    dfs, dpath = storage.resolve(job.out)
    if storage.exists(job.out):
        dfs.delete_dir(dpath)
    dfs.create_dir(dpath, recursive=True)
    pafs.copy_files(spath, dpath, source_filesystem=sfs, destination_filesystem=dfs)


def _write_outputs(exp: str, rows: list[dict], curves: dict, summary: dict, best: dict) -> None:
    import tempfile

    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in r.items()} for r in rows])
    t0 = min(min(c["t"]) for c in curves.values())
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in sorted(rows, key=lambda r: -r["best_valid_NDCG@10"]):
        c = curves[r["trial_id"]]
        style = ":" if r["stopped_early"] else "-"
        ax.plot(np.array(c["t"]) - t0, c[METRIC], style, marker=".", linewidth=2.5 if r["hand_set"] else 1.2,
                label=f"{r['trial_id'][-5:]}{' (hand-set)' if r['hand_set'] else ''}"
                      f"{' stopped' if r['stopped_early'] else ''}")
    ax.set_xlabel("seconds since the first report of the sweep")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title(f"{summary['sweep']}: {summary['trials']} trials, {summary['stopped_early']} stopped by ASHA "
                 f"(dotted)", fontsize=10)
    ax.legend(fontsize=6, ncol=2, loc="best", framealpha=0.6)
    fig.tight_layout()
    fs, path = storage.resolve(exp)
    with tempfile.TemporaryDirectory() as d:
        table.to_csv(Path(d) / "trials.csv", index=False)
        table.to_parquet(Path(d) / "trials.parquet", index=False)
        fig.savefig(Path(d) / "trials.png", dpi=120)
        (Path(d) / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        write_config(Path(d) / "best.yaml", best, notes=f"best trial {summary['best']['trial_id']} of sweep "
                                                         f"{summary['sweep']} (validation NDCG@10 "
                                                         f"{summary['best']['best_valid_NDCG@10']:.4f})")
        for f in Path(d).iterdir():
            with open(f, "rb") as src, fs.open_output_stream(f"{path}/{f.name}") as out:
                out.write(src.read())
    plt.close(fig)
    log.info(f"[tune] wrote {exp}/trials.csv, trials.parquet, trials.png, summary.json, best.yaml "
          f"(raycart train {summary['kind']} --config {exp}/best.yaml)")


def _print(rows: list[dict], summary: dict) -> None:
    keys = list(rows[0]["config"])
    log.info("\n| trial | " + " | ".join(keys) + " | epochs | best valid NDCG@10 | test NDCG@10 |")
    log.info("|---|" + "---|" * len(keys) + "---:|---:|---:|")
    for r in sorted(rows, key=lambda r: -r["best_valid_NDCG@10"]):
        cfg = " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r["config"].values())
        test = (f"{r['test_NDCG@10']:.4f}" if r["test_NDCG@10"] is not None
                else "stopped" if r["stopped_early"] else "not exported")
        tag = " (hand-set)" if r["hand_set"] else ""
        log.info(f"| {r['trial_id'][-5:]}{tag} | {cfg} | {r['epochs']} | {r['best_valid_NDCG@10']:.4f} | {test} |")
    b = summary["best"]
    log.info(f"\n[tune] best trial {b['trial_id']}: valid NDCG@10 {b['best_valid_NDCG@10']:.4f}, test NDCG@10 "
          f"{b['test_NDCG@10']:.4f} -> exported to {summary['exported']}")
    if summary["hand_set"] and summary["hand_set"]["test_NDCG@10"] is not None:
        log.info(f"[tune] hand-set defaults, same budget: test NDCG@10 {summary['hand_set']['test_NDCG@10']:.4f}")
    log.info(f"[tune] ASHA stopped {summary['stopped_early']}/{summary['trials']} trials: {summary['trial_epochs_run']} "
          f"trial-epochs run vs {summary['trial_epochs_without_asha']} without it "
          f"({summary['compute_saved']:.0%} saved); {summary['seconds']:.0f}s in all")
