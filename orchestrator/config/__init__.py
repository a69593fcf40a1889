"""The placements file: YAML (chimera's schema) or Prism's JSON ``model_configs``, validated at
load into frozen dataclasses. Every problem names its field path and the fix; all problems of a
file are reported together. See docs/configuration.md for the schema.

``spec`` (the dataclasses and defaults), ``load`` (reading a file), ``marks`` (each field's
YAML line), ``validator`` (problems with their field paths), ``sections`` (one validator per
section), ``cross`` (checks across models), ``prism`` (Prism's JSON form).
"""

from __future__ import annotations

from orchestrator.config.load import Yaml12Loader, load_config, parse_config, read_placements
from orchestrator.config.prism import model_from_prism
from orchestrator.config.spec import (
    DEFAULT_IDLE_PARK_S,
    DEFAULT_TPOT_SLO_S,
    DEFAULT_TTFT_SLO_S,
    GIB,
    SLO,
    WEIGHTS_BUDGET_FRACTION,
    Config,
    HoldLimits,
    HostSpec,
    Idle,
    InstanceSpec,
    LivenessLimits,
    ModelSpec,
    Placement,
    PoolSpec,
    RestartLimits,
    SchedulerSpec,
)
from orchestrator.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "DEFAULT_IDLE_PARK_S",
    "DEFAULT_TPOT_SLO_S",
    "DEFAULT_TTFT_SLO_S",
    "GIB",
    "HoldLimits",
    "HostSpec",
    "Idle",
    "InstanceSpec",
    "LivenessLimits",
    "ModelSpec",
    "Placement",
    "PoolSpec",
    "RestartLimits",
    "SLO",
    "SchedulerSpec",
    "WEIGHTS_BUDGET_FRACTION",
    "Yaml12Loader",
    "load_config",
    "model_from_prism",
    "parse_config",
    "read_placements",
]
