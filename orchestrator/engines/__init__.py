"""Engines behind one interface: ``sim`` (built-in simulated SGLang server) and ``sglang``
(stock ``python -m sglang.launch_server``). See base.py for the contract."""

from orchestrator.engines.base import Engine, LaunchRequest, LaunchSpec, get_engine

__all__ = ["Engine", "LaunchRequest", "LaunchSpec", "get_engine"]
