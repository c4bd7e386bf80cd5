"""The Ray Serve graph: deployments, the app builder, the state-store actor, binding to the node address. The only layer that imports ray.serve."""
