"""Keep the Serve replicas' own gRPC servers on the node's address, not on every interface.

Ray Serve 2.60 starts an inter-deployment gRPC server inside every replica, bound to ``[::]:0``
(``ray/serve/_private/replica.py``, ``_on_initialized``), whatever host the HTTP proxy was given:
with the proxy on 127.0.0.1, each replica still opens a port on all interfaces. There is no option
for it, so :func:`bind_replica_grpc_to_node_address` -- called first thing in every Raycart
deployment's ``__init__``, which runs before that server starts -- swaps the helper the replica
module binds with for one that uses the address Ray reports for the node (127.0.0.1 on a local
cluster, the node IP on a real one). ``tests/integration/test_serve.py`` checks every listener
while the app runs, so a Ray upgrade that moves this code fails loudly instead of reopening ports.
"""

from __future__ import annotations


def bind_replica_grpc_to_node_address() -> None:
    import ray
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "_raycart_node_bound", False):
        return
    host = ray.util.get_node_ip_address()
    host = f"[{host}]" if ":" in host else host

    def bound(server, address: str):
        wildcard, _, port = address.rpartition(":")
        if wildcard in ("[::]", "0.0.0.0", ""):
            address = f"{host}:{port}"
        return original(server, address)

    bound._raycart_node_bound = True  # type: ignore[attr-defined]  # a marker on the function: patched once
    replica.add_port_to_grpc_server = bound
