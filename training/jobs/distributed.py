"""A ``TorchConfig`` whose rendezvous store listens only on the node's own address.

Ray Train's stock torch backend rendezvouses through ``env://``: rank 0 starts torch's
``TCPStore`` server, which binds **all interfaces** (``*:PORT``), even when Ray itself was started
on 127.0.0.1. On a shop's cluster that is an unauthenticated key-value server open on every
interface of the node; on this project's loopback-only machines it breaks the rule outright.

:class:`BoundTorchConfig` does the same set-up with one change: rank 0 binds the store's socket to
the address Ray reports for its node (127.0.0.1 on a local cluster, the node IP on a real one) and
hands the bound socket to ``TCPStore(master_listen_fd=...)``; every rank then joins the process
group through that store. Gloo's and NCCL's own sockets already follow the node address.

Only the gloo and nccl backends are handled (TPU set-up is left to Ray's own backend). This relies on
two private helpers of ``ray.train.torch.config`` (Ray 2.60 pinned); the integration test
``tests/integration/test_train_retriever.py`` checks listeners *during* training, so a Ray upgrade
that changes them fails loudly rather than silently reopening the port.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend

_STORE_SOCKET: socket.socket | None = None  # rank 0 keeps the bound socket alive until the store owns it


def _bind_store_socket() -> tuple[str, int]:
    """Runs on rank 0: bind a socket to this node's address on a free port."""
    global _STORE_SOCKET
    addr = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((addr, 0))
    _STORE_SOCKET = sock
    return addr, sock.getsockname()[1]


def _join_process_group(backend: str, world_rank: int, world_size: int, addr: str, port: int,
                        timeout_s: int) -> None:
    """Runs on every rank: rank 0 serves the store on the bound socket, the others connect to it."""
    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    if backend == "nccl":  # fail on NCCL timeouts instead of hanging (Ray's backend does the same)
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    if world_rank == 0:
        assert _STORE_SOCKET is not None, "rank 0 must bind the store socket first"
        store = dist.TCPStore(addr, port, world_size, True, timeout, wait_for_workers=False,
                              master_listen_fd=_STORE_SOCKET.fileno())
    else:
        store = dist.TCPStore(addr, port, world_size, False, timeout)
    dist.init_process_group(backend=backend, store=store, rank=world_rank, world_size=world_size, timeout=timeout)


class _BoundTorchBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config):
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError("Distributed torch is not available.")
        backend = backend_config.backend
        if backend is None:
            gpus = worker_group.get_resources_per_worker().get("GPU", 0)
            backend = "nccl" if gpus > 0 else "gloo"
        if backend not in ("gloo", "nccl"):
            return super().on_start(worker_group, backend_config)
        addr, port = worker_group.execute_single(0, _bind_store_socket)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(i, _join_process_group, backend=backend, world_rank=i,
                                                   world_size=len(worker_group), addr=addr, port=port,
                                                   timeout_s=backend_config.timeout_s)
                 for i in range(len(worker_group))])


class BoundTorchConfig(TorchConfig):
    """``TorchConfig`` for ``TorchTrainer(torch_config=...)``: see the module docstring."""

    @property
    def backend_cls(self):
        return _BoundTorchBackend
