"""The load generator: prompts, request bodies and stream parsing, timing definitions, the
open-loop sender, and the scraper of chimera's /metrics."""

from bench.client.loadgen import ClientConfig, ClientShards, make_client, run_open_loop, send_one
from bench.client.prompts import CHAT, COMPLETIONS, GENERATE, ROUTES
from bench.client.record import RequestRecord
from bench.client.timing import StreamClock, Timings

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "GENERATE",
    "ROUTES",
    "ClientConfig",
    "ClientShards",
    "RequestRecord",
    "StreamClock",
    "Timings",
    "make_client",
    "run_open_loop",
    "send_one",
]
