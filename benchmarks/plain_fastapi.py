"""Baseline for the Serve benchmark: the same retrieve -> rank -> policy -> log path in ONE plain
FastAPI process (uvicorn, no Ray), so ``benchmarks/serve_load.py`` can state Ray Serve's overhead
as a ratio. It uses the serving modules themselves (catalog, FAISS index, candidate features,
ranker, LinUCB policy, durable feedback log); only the HTTP plumbing and the process layout differ.

    .venv/bin/python benchmarks/plain_fastapi.py --model DIR --data DIR --port 8001 --workdir DIR
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException

from serving.catalog import Catalog
from serving.feedback_log import FeedbackLog, FeedbackLogConfig
from serving.index import VectorIndex
from serving.schemas import RecommendRequest
from training.data.interactions import Interactions
from training.modeldir import load_model
from training.models.bandit import LinUCBPolicy, PolicyConfig


def make_app(model_dir: str, data_dir: str, workdir: str) -> FastAPI:
    pipe = load_model(model_dir)
    catalog = Catalog.load(data_dir)
    index = VectorIndex(pipe.stage.retriever.item_vecs.numpy())
    policy = LinUCBPolicy(PolicyConfig(), np.random.default_rng(0))
    log = FeedbackLog(FeedbackLogConfig(root=f"{workdir}/feedback", wal_dir=f"{workdir}/wal"), "plain")
    lock = threading.Lock()  # the policy and the log are single-writer objects
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/recommend")
    def recommend(req: RecommendRequest) -> dict:  # sync: FastAPI runs it in its thread pool
        user, history, times = catalog.history_of(req.user_id)
        if req.history:
            raise HTTPException(400, "the baseline serves known users only")
        hist = Interactions(np.array([0, len(history)]), history, times, pipe.num_items)
        vec = pipe.stage.retriever.user_vectors(hist).numpy()
        items, scores = index.search(vec, pipe.k, [history])
        ranked = pipe.ranked_lists(hist, pipe.stage.from_search(hist, items, scores))[0]
        for r in ranked:
            r["item_id"] = catalog.item_ids[r["item"]]
        request_id = uuid.uuid4().hex
        with lock:
            shown = policy.choose(ranked, req.context, req.k)
            policy.observe_impression(shown)
            out = [{"item_id": ranked[s.index]["item_id"], "position": s.position, "propensity": s.propensity,
                    "score": ranked[s.index]["score"]} for s in shown]
            log.append_many("impressions", [{"request_id": request_id, "user_id": req.user_id, "context_hash": "",
                                             "num_candidates": len(ranked), "item_id": o["item_id"],
                                             "position": o["position"], "propensity": o["propensity"],
                                             "score": o["score"], "model_version": "plain",
                                             "policy_version": "plain",
                                             "timestamp": time.time()} for o in out])
        return {"request_id": request_id, "items": out}

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--port", type=int, default=8001)
    a = p.parse_args()
    uvicorn.run(make_app(a.model, a.data, a.workdir), host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
