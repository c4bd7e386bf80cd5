"""The serving path in plain Python (no Ray): the service, messages, retrieval and ranking, the policy core, catalogue, vector index, items added at runtime, settings and metrics."""
