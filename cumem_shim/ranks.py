"""Tensor parallelism: every TP rank's scheduler process backs its own shard's KV pool, and all
ranks of a server apply each limit in the same scheduler step. Pure (no SGLang, no sockets).

Why the same step: SGLang runs one scheduler process per TP rank (srt/entrypoints/engine.py
starts one ``run_scheduler_process`` per rank; srt/managers/scheduler.py) and keeps them in
lockstep by making every rank take the same decisions from the same inputs. Admission reads
``available_size()``; if one rank saw a new limit a step before another, the ranks would build
different batches and their collectives would hang. So a limit is never applied from a rank's
own channel when TP > 1:

- the orchestrator sends ``set_limit`` to rank 0's channel only (the leader); its box collects;
- each step, rank 0 receives the requests of the step and broadcasts them to the other ranks
  (``SchedulerRequestReceiver._broadcast_reqs_across_ranks``, over the TP CPU group). The hook
  (``carry``) appends a ``LimitNote`` with a newly accepted limit to what the leader broadcasts;
- every rank, the leader included, takes the note out of what it received and posts it to its
  ``agreed`` box, which its scheduler applies at its next ``available_size()``: the same call on
  every rank, since all ranks run the same code on the same requests.
No extra collective: the note rides a broadcast SGLang makes every step anyway, about once a
second (when the ledger moves the limit). The limit is per GPU (each rank's pool is a shard of
the same size), and every rank's channel answers ``status`` so the orchestrator reads each
GPU's mapped memory and takes the group's figure over ranks (orchestrator/kv/client.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cumem_shim.elastic import ElasticKV
from cumem_shim.errors import ProtocolError
from cumem_shim.limit import Accepted
from cumem_shim.types import Status


@dataclass(frozen=True)
class LimitNote:
    """A limit rank 0 accepted, in the list of requests it broadcasts (pickled by SGLang's
    ``broadcast_pyobj``; importable on every rank since every rank loads the shim)."""

    limit_bytes: int
    revision: int


class Follower:
    """The channel target of a rank > 0: ``status`` of its own shard; ``set_limit`` is refused
    with where to send it (rank 0 carries limits to every rank)."""

    def __init__(self, kv: ElasticKV, rank: int, leader_socket: str) -> None:
        self.kv, self.rank, self.leader_socket = kv, rank, leader_socket

    def set_limit(self, limit_bytes: int, revision: int) -> Accepted:
        raise ProtocolError(
            f"TP rank {self.rank} follows rank 0's limit: send set_limit to {self.leader_socket} "
            "(it reaches every rank in the same scheduler step)"
        )

    def status(self) -> Status:
        return self.kv.status()


def carry(kv: ElasticKV, reqs: list[Any] | None, broadcast: Callable[[list[Any] | None], list[Any]]) -> list[Any]:
    """Around SGLang's broadcast of one step's requests. ``reqs``: what this rank pulled (a list
    on the broadcasting rank 0, None on the others). Returns the step's requests without the
    note; a note received is posted to ``kv.agreed`` on every rank."""
    if reqs is not None:
        taken = kv.box.take()
        if taken is not None:
            reqs = [*reqs, LimitNote(*taken)]
    out = broadcast(reqs)
    notes = [r for r in out if isinstance(r, LimitNote)]
    if not notes:
        return out
    for note in notes:
        kv.agreed.post(note.limit_bytes, note.revision)  # stale revisions are ignored
    return [r for r in out if not isinstance(r, LimitNote)]
