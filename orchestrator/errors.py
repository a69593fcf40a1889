"""chimera's exception tree. Every error says whether it is fatal or transient and how to fix it.

ChimeraError
 ├─ ConfigError         the placements file is wrong (fatal; message names the field path)
 ├─ EngineError         an engine instance could not start or answer
 │   ├─ EngineStartError    process exited or never became ready (fatal for that instance)
 │   └─ EngineUnavailable   instance busy/starting/failed when a request needs it (transient)
 └─ ShapeError          (orchestrator.shapes) a model's size cannot be known (fatal)
"""

from __future__ import annotations


class ChimeraError(Exception):
    """Base of chimera's own errors."""

    transient: bool = False


class ConfigError(ChimeraError):
    """A placements file or flag is invalid; the message names the field path and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class EngineError(ChimeraError):
    """An engine instance failed."""


class EngineStartError(EngineError):
    """An instance exited or did not become ready; ``log_path`` holds its output."""

    def __init__(self, message: str, log_path: str | None = None) -> None:
        self.log_path = log_path
        super().__init__(message + (f" (log: {log_path})" if log_path else ""))


class EngineUnavailable(EngineError):
    """No instance of the model can take the request now (transient: retry after a while)."""

    transient = True

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)
