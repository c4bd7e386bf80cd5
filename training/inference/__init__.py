"""Using trained models: the retrieve -> rank pipeline, candidate generation, features, item embeddings (Ray Data batch inference), items added at runtime, model directories."""
