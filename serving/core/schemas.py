"""HTTP request models and the application's typed arguments (validated once, at the edge)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# every string a request carries has a length cap (ids, context values, attributes)
Id = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ContextKey = Annotated[str, StringConstraints(min_length=1, max_length=100)]
ContextValue = Annotated[str, StringConstraints(max_length=500)] | int | float | bool
# every request model: extra fields refused, NaN and +-Infinity refused (422) wherever a number goes
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class Filters(BaseModel):
    model_config = STRICT

    category: str | None = Field(None, min_length=1, max_length=200)
    price_min: float | None = Field(None, ge=0)
    price_max: float | None = Field(None, ge=0)
    exclude: list[Id] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _range(self):
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError("price_min must not exceed price_max")
        return self


class RecommendRequest(BaseModel):
    """``user_id`` (known users: their history is looked up) and/or ``history`` (external item
    ids, oldest first, e.g. an anonymous session); neither -> the cold-start path. Without a
    ``user_id``, ``session_id`` names an anonymous session whose feedback builds its real-time
    history (the answer gives a new one when none is sent)."""

    model_config = STRICT

    user_id: str | None = Field(None, min_length=1, max_length=200)
    session_id: str | None = Field(None, min_length=1, max_length=100)
    history: list[Id] | None = Field(None, max_length=1000)
    context: dict[ContextKey, ContextValue] = Field(default_factory=dict, max_length=50)
    k: int = Field(10, ge=1, le=100)
    filters: Filters = Field(default_factory=Filters)


class FeedbackRequest(BaseModel):
    model_config = STRICT

    request_id: str = Field(min_length=1, max_length=100)
    item_id: str = Field(min_length=1, max_length=200)
    event: Literal["view", "click", "cart", "purchase"]


class NewItem(BaseModel):
    """``POST /items``: a catalogue item added at runtime. Its vector comes from its content
    (attributes ``key=value``, title/description through the model's text encoder when it has
    one, an image URI through its image encoder), so it can be recommended before anyone saw it."""

    model_config = STRICT

    item_id: str = Field(min_length=1, max_length=200)
    title: str | None = Field(None, max_length=1000)
    description: str | None = Field(None, max_length=10_000)
    category: str | None = Field(None, min_length=1, max_length=200)
    brand: str | None = Field(None, min_length=1, max_length=200)
    attributes: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=200)
    price: float | None = Field(None, ge=0, le=1e9)
    # a key under the app's ``image_root`` (e.g. ``shoes/123.jpg``): nothing outside it is read
    image: str | None = Field(None, min_length=1, max_length=500)


@dataclass(frozen=True)
class PolicyInputs:
    """What the Ingress hands the Retriever from a shopper's real-time state (internal item ids),
    for the exploration candidates and the policy's per-item columns."""

    recent: list[int] = field(default_factory=list)  # engaged with since training, newest last
    shown: list[int] = field(default_factory=list)  # items of the remembered answers
    clicked: list[bool] = field(default_factory=list)  # ... engaged with or not
    explore: int = 0  # random catalogue items to add to the candidates
    near: int = 0  # items nearest the newest engaged one (recent[-1]) to add to the candidates
    dim: int = 0  # user x item product coordinates
    bandwidth: float = 0.25  # of the recent-click-rate kernel, in cosine units


class ModelSpec(BaseModel):
    """The model the Retriever and Ranker serve: their ``user_config``. A new version is rolled
    out by changing it (``serve deploy`` / ``serve.run`` with another ``model_dir``): Serve
    reconfigures the running replicas in place, so no request is dropped."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str = Field(min_length=1)
    model_version: str = Field("v1", min_length=1)


class AppArgs(BaseModel):
    """Arguments of :func:`serving.deploy.app.build_app` (also the ``args`` of ``cluster/serve.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    model_dir: str  # a ranker directory from `raycart train ranker` (embeds its retriever)
    data_dir: str  # the dataset it was trained on: catalogue and user histories
    feedback_root: str = "raycart-work/feedback"  # Parquet feedback log (local or s3://)
    wal_dir: str = "raycart-work/serve-wal"  # local write-ahead log of the feedback log
    # what a 200 on /feedback and /recommend means: "local" = fsynced in wal_dir on the replica's
    # node (survives a replica restart, not the node's loss); "shared" = in shared storage
    # (<feedback_root>/_wal, e.g. S3) via group commit (serving.feedback.shared): survives losing the node
    feedback_ack: Literal["local", "shared"] = "local"
    policy_state: str = "raycart-work/policy/state.npz"  # checkpoint of the bandit (local or s3://)
    policy_epsilon: float = Field(0.05, ge=0, le=1)
    policy_alpha: float = Field(0.1, ge=0)  # UCB width: small, so a young policy follows the ranker
    policy_seed: int = 0
    # the policy is checkpointed in the background, at most this often and only when it changed
    # (never on the request path); a restart loses at most this much learning, which the feedback
    # log still holds
    checkpoint_interval_s: float = Field(5.0, gt=0)
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    # the batch window only while requests queue: a request that arrives alone is ranked at once
    adaptive_batching: bool = True
    # retriever and ranker in one deployment (one hop, one model copy) or two (scaled apart)
    topology: Literal["separate", "fused"] = "separate"
    model_version: str = "v1"
    # -- rollouts (README "Model rollout") --
    # extra replicas a rollout starts before stopping old ones, in % of each stateless deployment
    # (Ingress, retriever, ranker): 100 = none of them ever goes to zero replicas mid-rollout (the
    # cluster needs room for them); 0 = stop, then start (a gap of a replica start per deployment)
    rollout_surge_percent: int = Field(100, ge=0, le=100)
    # how long a request waits for a single-replica deployment (the policy, the item registry)
    # that is restarting before it answers without it (the ranker's order; no new runtime items)
    singleton_wait_s: float = Field(5.0, gt=0)
    # the retriever's vector index (serving.core.index): exact up to 100k items and HNSW above ("auto"),
    # or forced; ef_search / nprobe trade recall for speed (benchmarks/catalog_1m.py at 1M items)
    index_kind: Literal["auto", "exact", "hnsw", "ivf"] = "auto"
    index_ef_search: int = Field(256, ge=1)
    index_nprobe: int = Field(64, ge=1)
    items_root: str = "raycart-work/new-items"  # items added at runtime (local or s3://), replayed on start
    # CPUs per replica of each deployment when no serve config overrides it: small, so that the
    # whole graph fits a laptop-sized local cluster; cluster/serve.yaml sets real values
    replica_cpus: float = Field(0.25, gt=0)
    # autoscale Ingress, Retriever and Ranker between 1 and max_replicas (serving.deploy.app.AUTOSCALING);
    # cluster/serve.yaml sets per-deployment values instead
    autoscaling: bool = False
    max_replicas: int = Field(4, ge=1)
    # -- the online loop (serving.state.user_state; README "The loop") --
    user_state: Literal["embedded", "redis"] = "embedded"  # where real-time user state lives
    redis_url: str = "redis://127.0.0.1:6379/0"  # with user_state="redis"
    state_dir: str = "raycart-work/user-state"  # journal + snapshot of the embedded backend (local disk)
    state_max_events: int = Field(50, ge=1)  # per user / session
    # a shopper who stopped engaging (see stale_alpha) is not shown the items they ignored in this
    # many last answers (a steady shopper's ignored items stay: the policy weighs them)
    exclude_shown: int = Field(3, ge=0)
    shown_window: int = Field(5, ge=0)  # answers remembered for the policy's recent click rate near an item
    # items drawn at random from the catalogue and added to the retriever's candidates, so the
    # policy can reach beyond the user vector's neighbourhood when the shopper's taste moves
    explore_candidates: int = Field(20, ge=0)
    # items nearest the shopper's newest click (or cart, purchase) added to the candidates, so the
    # slate can follow a click into a part of the catalogue the history does not lead to at once
    # (the first click in a new taste)
    recent_candidates: int = Field(20, ge=0, le=1000)
    # a shopper who has stopped engaging (UserView.stale: the newest run of ignored answers is
    # unlikely, below `stale_alpha`, at their engagement rate before it) is explored harder:
    # exploration floor up to `stale_epsilon`, drawn among the exploration candidates -- a change of
    # taste shows as engagement stopping (cf. M-UCB, Cao et al., AISTATS 2019, which re-explores
    # once a change is detected). stale_alpha 0 switches it off. How hard grows with the evidence
    # (user_state.stale_strength): the full floor, the spread and the ignored items' exclusion once the
    # run's probability is below `stale_full_alpha`, a share of the floor and spread before that
    # (stale_full_alpha >= stale_alpha: full at once).
    stale_alpha: float = Field(0.3, ge=0, lt=1)
    stale_full_alpha: float = Field(0.05, gt=0, lt=1)
    stale_epsilon: float = Field(1.0, ge=0, le=1)
    session_ttl_s: float = Field(1800.0, gt=0)  # anonymous sessions expire after this long unused
    state_timeout_s: float = Field(2.0, gt=0)  # past this the answer falls back to the stored history
    # the two halves of learning from feedback; both off = the "no-learning" arm of the closed loop
    realtime_state: bool = True  # /recommend reads the real-time history and the exclusion rules
    policy_learning: bool = True  # the policy updates from impressions and feedback
    # 0: every choice at the single Policy replica (one hop per request); > 0: Ingress replicas
    # choose from a copy of its parameters at most this many seconds old (plus one fetch) and tell
    # it the impression afterwards -- one hop fewer, exact propensities for the copy used
    # (serving.core.policy.PolicyCopy)
    policy_copy_s: float = Field(0.0, ge=0)
    policy_item_dim: int = Field(16, ge=0)  # user x item product coordinates the policy learns over
    policy_bandwidth: float = Field(0.25, gt=0)  # kernel width of the shopper's recent click rate near an item
    # the policy's prior, in reward units (click 1, cart 2, purchase 5), as strong as `policy_ridge`
    # observations: a 1-sd better ranker score is worth `policy_prior_score`; recent-click
    # similarity, the shopper's recent click rate near the item (x 2: about the reward of a click)
    # and novelty are worth `policy_prior_item`. A young policy then follows the ranker and the
    # shopper's own recent behaviour, and a handful of unclicked impressions cannot turn it over.
    policy_prior_score: float = 0.3
    policy_prior_item: list[float] = Field(default_factory=lambda: [0.3, 2.0, 0.1], max_length=4)
    policy_ridge: float = Field(10.0, gt=0)
    # MMR weight (slate items unlike each other; 0 = off) on the requests explored harder: spreads
    # the search for a new taste; a steady shopper's slate is not spread away from their taste
    policy_diversity: float = Field(0.3, ge=0)
    policy_pending: int = Field(20_000, ge=1)  # requests whose shown features the policy keeps for feedback
    # -- the HTTP edge (serving.edge.security; README "Security and durability") --
    # ``<role> <key>`` lines (roles shopper, admin); a file without keys is refused. Without a file,
    # see trust_loopback
    api_keys_file: str | None = None
    max_body_bytes: int = Field(64 * 1024, ge=1024)  # larger request bodies get 413
    request_timeout_s: float = Field(10.0, gt=0)  # a request not answered by then gets 504
    # where POST /items may read images from (local folder or s3:// prefix); None = images refused
    image_root: str | None = None
    image_max_bytes: int = Field(5 * 1024 * 1024, ge=1)  # an image file larger than this is refused
    image_max_pixels: int = Field(40_000_000, ge=1)  # ... and an image with more pixels (decompression bombs)
    wal_retry_max_s: float = Field(30.0, gt=0)  # longest wait between retries of a failed feedback-log publish
    # -- retraining from the log on a schedule (serving.deploy.retrain_trigger); off unless one is set --
    retrain_every_events: int | None = Field(None, ge=1)  # feedback events published since the last retrain
    retrain_every_minutes: float | None = Field(None, gt=0)  # ... or this long, with at least one new event
    retrain_poll_s: float = Field(30.0, gt=0)  # how often the schedule counts the log
    retrain_work: str = "raycart-work/retrain"  # merged data, runs, candidates and decision reports
    retrain_epochs: int | None = Field(None, ge=1)  # None: the serving model's configuration
    retrain_workers: int = Field(1, ge=1)
    # the gate: the paired bootstrap 95 % interval of holdout NDCG@10 (candidate - serving) must have
    # its lower bound >= -retrain_ndcg_tolerance (serving.jobs.retrain)
    retrain_ndcg_tolerance: float = Field(0.002, ge=0, lt=1)
    # the declarative hook to the job runner: the import path ("module:function") of a function that
    # returns the handle of the detached actor running the retrain jobs (resolved with importlib by
    # the schedule, which does not import serving.jobs)
    retrainer: str = Field("serving.jobs.retrainer:retrainer", pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
    # the dataset the first model was trained on: a promoted app serves the merged data (data_dir),
    # the log is merged into this one (None: data_dir)
    base_data_dir: str | None = None
    # -- cluster secrets (4e; cluster/README.md "Security") --
    # the environment variable holding the user-state Redis's password (on Kubernetes: from a Secret
    # through secretKeyRef), read when the client connects; None = no password (or one in redis_url)
    redis_password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # -- shopper identity and rate limits (4b; serving.edge.identity, serving.core.ratelimit) --
    # the shared secret of signed shopper tokens (X-Shopper-Token; a file, never inline): set, and
    # /recommend and /feedback act only for the shopper the token names; None = anyone for anyone
    shopper_token_secret_file: str | None = None
    session_token_ttl_s: float = Field(86_400.0, gt=0)  # tokens the app mints for new anonymous sessions
    # token buckets per replica (0 = off): requests a second per API key and per shopper (user or
    # session), and how many may come at once
    rate_limit_key_per_s: float = Field(0.0, ge=0)
    rate_limit_key_burst: int = Field(0, ge=0)
    rate_limit_user_per_s: float = Field(0.0, ge=0)
    rate_limit_user_burst: int = Field(0, ge=0)
    rate_limit_max_buckets: int = Field(100_000, ge=1)  # buckets kept per scope (least recently used dropped)
    feedback_per_request: int = Field(0, ge=0)  # recorded feedback events one answer may collect, per replica (0 = no cap)
    # -- edge trust and images (4c/4d; serving.edge.security, serving.edge.shop) --
    # without API keys, serve clients on loopback (addressed to a loopback name) with every role; off,
    # a keyless app refuses whatever needs a role (401). On for `raycart demo`, `raycart shop` without
    # keys and `raycart serve --trust-loopback`; no effect once keys are configured
    trust_loopback: bool = False
    keys_reload_s: float = Field(5.0, gt=0)  # api_keys_file is re-read when it changed, checked at most this often
    image_cache_bytes: int = Field(64 * 1024 * 1024, ge=0)  # shop pictures kept in memory per Ingress replica
    # -- user-state bounds (4a) (serving.state.user_state: what made-up user ids and sessions may hold) --
    state_user_ttl_s: float = Field(30 * 86_400.0, gt=0)  # a known user's live state expires after this long unused
    state_max_ephemeral_keys: int = Field(100_000, ge=1)  # sessions + unknown user ids held (least recent dropped)
    state_max_answer_ids: int = Field(100, ge=1)  # ids remembered of each answer (its top positions)
    state_max_shown_bytes: int = Field(16_384, ge=256)  # remembered answers per key, JSON bytes (oldest dropped)
    state_compact_every: int = Field(20_000, ge=1)  # journal lines between background snapshots (embedded)

    @property
    def base_data(self) -> str:
        """The dataset the feedback log is merged into when retraining (see ``base_data_dir``)."""
        return self.base_data_dir or self.data_dir

    @model_validator(mode="after")
    def _limits(self):
        for scope in ("key", "user"):
            rate, burst = getattr(self, f"rate_limit_{scope}_per_s"), getattr(self, f"rate_limit_{scope}_burst")
            if (rate > 0) != (burst > 0):
                raise ValueError(f"rate_limit_{scope}_per_s and rate_limit_{scope}_burst are both 0 (off) or both > 0")
        return self
