"""cluster/serve.yaml stays in step with the code: its args validate, its deployments exist."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serving.schemas import AppArgs, RecommendRequest

ROOT = Path(__file__).resolve().parents[2]


def test_serve_yaml_matches_the_application():
    from serving import app, deployments

    config = yaml.safe_load((ROOT / "cluster/serve.yaml").read_text())
    (application,) = config["applications"]
    assert application["import_path"] == "serving.app:build_app"
    AppArgs(**application["args"])
    names = {d["name"] for d in application["deployments"]}
    assert names == {"Ingress", "Retriever", "Ranker", "Policy", "ItemRegistry"}
    for name in names:
        assert hasattr(app, name) or hasattr(deployments, name)


def test_request_models_refuse_bad_input():
    with pytest.raises(ValidationError):
        RecommendRequest(k=0)
    with pytest.raises(ValidationError, match="price_min"):
        RecommendRequest(filters={"price_min": 5, "price_max": 1})
    assert RecommendRequest().k == 10
