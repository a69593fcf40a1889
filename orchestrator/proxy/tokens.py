"""What a relayed stream says about its own timing, read as its chunks pass (never changed):
its server-sent-event frames, whether it reached ``data: [DONE]`` and when, and how many output
tokens it carried, for time per output token (TPOT) and SLO attainment.

Tokens: the ``usage.completion_tokens`` of a frame that carries it (OpenAI's
``stream_options.include_usage``; SGLang sends it on its last frame) or the cumulative
``meta_info.completion_tokens`` of SGLang's ``/generate`` frames, else one per data frame
that is not a usage-only frame (SGLang streams one frame per decode step by default,
``--stream-interval 1``; a larger interval undercounts and overstates TPOT). Only frames naming
``completion_tokens`` are parsed as JSON; the others are counted by their bytes.

TPOT = (end − first chunk) / (tokens − 1), end being the ``[DONE]`` frame (else the last
frame): the proxy's (e2e − TTFT) spread over the tokens after the first. Undefined below two
tokens.

A whole (non-streamed) answer shows no first token, so its TPOT is an upper bound: e2e spread
over all its tokens (``answer_tpot``), queueing and prefill included. It converges on the real
TPOT as answers get longer and never understates it. With ``n`` choices the tokens are counted
per choice (they decode in parallel).
"""

from __future__ import annotations

import orjson

DONE = b"[DONE]"
USAGE_KEY = b'"completion_tokens"'


class StreamMeter:
    """Fed every relayed chunk with the time it was sent (``feed``)."""

    def __init__(self) -> None:
        self._tail = b""  # an incomplete frame, completed by the next chunk
        self.frames = 0  # data frames that carry output (not [DONE], not usage-only)
        self.completion_tokens: int | None = None  # from the usage the stream reported
        self.done_at: float | None = None  # when ``data: [DONE]`` was sent
        self.last_at: float | None = None  # when the last data frame was sent

    @property
    def done(self) -> bool:
        """The stream reached ``data: [DONE]``: the client has the whole answer."""
        return self.done_at is not None

    def feed(self, chunk: bytes, now: float) -> None:
        *frames, self._tail = (self._tail + chunk).split(b"\n\n")
        for f in frames:
            self._frame(f.strip(), now)

    def _frame(self, frame: bytes, now: float) -> None:
        if not frame.startswith(b"data:"):
            return  # a comment or an event name: no output
        payload = frame[5:].strip()
        if payload == DONE:
            self.done_at = now
            return
        self.last_at = now
        if USAGE_KEY in payload and self._usage(payload):
            return
        self.frames += 1

    def _usage(self, payload: bytes) -> bool:
        """Record the frame's usage; True if it is usage-only (no choices)."""
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(obj, dict):
            return False
        for key in ("usage", "meta_info"):  # OpenAI routes; SGLang's /generate (cumulative)
            usage = obj.get(key)
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                self.completion_tokens = usage["completion_tokens"]
        return obj.get("choices") == []

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.frames

    def tpot(self, first_chunk_at: float) -> float | None:
        """Seconds per output token after the first (module docstring); None below two tokens."""
        end = self.done_at if self.done_at is not None else self.last_at
        if end is None or self.tokens < 2:
            return None
        return max(0.0, end - first_chunk_at) / (self.tokens - 1)


def answer_tokens(body: bytes) -> float | None:
    """Output tokens per choice of a whole JSON answer: ``usage.completion_tokens`` (OpenAI
    routes) or ``meta_info.completion_tokens`` (``/generate``); None if it names neither."""
    if USAGE_KEY not in body:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    for key in ("usage", "meta_info"):
        usage = obj.get(key)
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            choices = obj.get("choices")
            n = len(choices) if isinstance(choices, list) and choices else 1
            return int(usage["completion_tokens"]) / n
    return None


def answer_tpot(e2e_s: float, tokens: float | None) -> float | None:
    """A whole answer's TPOT upper bound (module docstring); None below two tokens."""
    if tokens is None or tokens < 2:
        return None
    return max(0.0, e2e_s) / tokens
