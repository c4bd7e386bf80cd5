"""cluster/serve.yaml stays in step with the code: its args validate, its deployments exist."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serving.core.schemas import AppArgs, RecommendRequest

ROOT = Path(__file__).resolve().parents[3]


def test_serve_yaml_matches_the_application():
    from serving.deploy import app

    config = yaml.safe_load((ROOT / "cluster/serve.yaml").read_text())
    (application,) = config["applications"]
    assert application["import_path"] == "serving.deploy.app:build_app"
    args = AppArgs(**application["args"])
    names = {d["name"] for d in application["deployments"]}
    # the embedded user state is a deployment of its own; with Redis there is none
    expected = {"Ingress", "Retriever", "Ranker", "Policy", "ItemRegistry"} | (
        {"UserStateStore"} if args.user_state == "embedded" else set())
    assert names == expected
    for name in names:
        assert hasattr(app, name)


def test_request_models_refuse_bad_input():
    with pytest.raises(ValidationError):
        RecommendRequest(k=0)
    with pytest.raises(ValidationError, match="price_min"):
        RecommendRequest(filters={"price_min": 5, "price_max": 1})
    assert RecommendRequest().k == 10
