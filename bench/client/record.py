"""What the client records for one request (one line of requests.jsonl). Seconds throughout;
times named ``*_at_s`` are seconds from the start of the run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    id: int
    model: str
    route: str
    arrival_s: float  # when the trace says it arrives
    sent_at_s: float = 0.0  # when it was sent (arrival + the client's lag)
    status: int = 0  # HTTP status; 0 = no response (connection error, timeout)
    ok: bool = False  # 200, output received, the stream ended with [DONE], no error frame
    error: str = ""
    prompt_tokens: int = 0  # what the server counted when it says, else what was asked
    prompt_tokens_requested: int = 0
    output_tokens: int = 0  # completion_tokens the server reported, else the requested count
    output_tokens_requested: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None
    instance: str = ""  # x-chimera-instance of the answer (which engine instance served it)
    run: int = 0  # index of the run in a sweep

    @property
    def end_at_s(self) -> float | None:
        return None if self.e2e_s is None else self.sent_at_s + self.e2e_s

    @property
    def send_lag_s(self) -> float:
        return self.sent_at_s - self.arrival_s

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RequestRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
