"""Shared test setup: GPU tests skip cleanly without CUDA and sglang."""

from __future__ import annotations

import pytest

from orchestrator.sglang.detect import cuda_gpu_count, sglang_available


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if cuda_gpu_count() > 0 and sglang_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU and the sglang package (make test-gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
