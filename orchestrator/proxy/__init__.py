"""The OpenAI-compatible reverse proxy in front of every engine instance (see app.py)."""

from orchestrator.proxy.app import create_app

__all__ = ["create_app"]
