"""The Ray Serve graph: deployments, the app builder, the state-store actor, the retrain schedule's
trigger, binding to the node address, and starting, redeploying and stopping the app (``run``).
The only layer that imports ray.serve."""
