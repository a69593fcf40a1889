"""Per-request metric definitions, as ``sglang.bench_serving`` computes them (all in seconds):

- TTFT: from sending the request to the first chunk that carries output (non-empty
  ``delta.content`` / ``text``); role-only and usage-only chunks do not count.
- E2E latency: from sending to the last non-empty line of the stream (``data: [DONE]``).
- ITL: the gaps between successive output chunks. On /generate a chunk may carry several new
  tokens (``meta_info.completion_tokens`` is cumulative): its gap is split evenly over them, and
  a chunk with no new token is skipped (bench_serving's ``async_request_sglang_generate``).
- TPOT: (E2E - TTFT) / (output tokens - 1), only for outputs of more than one token; output
  tokens = the server's ``completion_tokens`` when it reports them, else the requested count.

``StreamClock`` collects the raw times while a stream is read; ``finish`` turns them into a
``Timings`` with the definitions above. Pure: times come from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Timings:
    ttft_s: float | None
    e2e_s: float | None
    tpot_s: float | None
    itl_s: list[float]
    output_tokens: int


@dataclass
class StreamClock:
    """Raw times of one stream. ``split_itl``: /generate semantics (see the module doc)."""

    sent_at: float
    split_itl: bool = False
    first_at: float | None = None
    last_output_at: float | None = None
    last_line_at: float | None = None
    itl_s: list[float] = field(default_factory=list)
    tokens_seen: int = 0  # cumulative completion tokens reported so far
    reported_tokens: int | None = None

    def line(self, at: float) -> None:
        """Any non-empty line of the stream arrived at ``at``."""
        self.last_line_at = at

    def output(self, at: float, completion_tokens: int | None = None) -> None:
        """A chunk with output arrived at ``at``; ``completion_tokens``: cumulative count if
        the chunk reports one (/generate's meta_info)."""
        self.line(at)
        if self.first_at is None:
            self.first_at = at
        elif self.split_itl and completion_tokens is not None:
            new = completion_tokens - self.tokens_seen
            if new <= 0:
                return
            assert self.last_output_at is not None
            self.itl_s.extend([(at - self.last_output_at) / new] * new)
        else:
            assert self.last_output_at is not None
            self.itl_s.append(at - self.last_output_at)
        self.last_output_at = at
        if completion_tokens is not None:
            self.tokens_seen = completion_tokens

    def usage(self, completion_tokens: int) -> None:
        """The server reported the output length (usage chunk or meta_info)."""
        self.reported_tokens = completion_tokens

    def finish(self, requested_tokens: int) -> Timings:
        out = self.reported_tokens if self.reported_tokens is not None else requested_tokens
        ttft = None if self.first_at is None else self.first_at - self.sent_at
        e2e = None if self.last_line_at is None else self.last_line_at - self.sent_at
        tpot = None
        if ttft is not None and e2e is not None and out > 1:
            tpot = (e2e - ttft) / (out - 1)
        return Timings(ttft, e2e, tpot, list(self.itl_s), out)
