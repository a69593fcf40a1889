"""The plugin entry point: inactive without CHIMERA_SHIM_SOCKET; when asked for and it cannot
be installed, the process stops (SystemExit, which SGLang's load_plugins does not swallow)
naming what is missing; the entry point is discoverable by importlib.metadata."""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cumem_shim import _driver, hooks, plugin, settings
from cumem_shim.errors import ShimConfigError

GOOD_ENV = {settings.SOCKET: "/tmp/x.sock", settings.LIMIT_BYTES: "1073741824", settings.STRICT_IDLE_CHECK: "0"}

# An SGLang whose allocator lost `alloc_decode` and whose configurator renamed its profile.
OLD_SGLANG = {
    "sglang/__init__.py": '__version__ = "0.4.0"\n',
    "sglang/srt/__init__.py": "",
    "sglang/srt/mem_cache/__init__.py": "",
    "sglang/srt/mem_cache/memory_pool.py": "class MHATokenToKVPool:\n    def _create_buffers_normal(self): ...\n"
    "    def _kv_buffer_shapes(self): ...\n",
    "sglang/srt/mem_cache/kv_cache_configurator.py": "class KVCacheConfigurator:\n"
    "    def profile(self, pre_model_load_memory): ...\n"
    "    def configure(self, *, pre_model_load_memory): ...\n",
    "sglang/srt/mem_cache/allocator/__init__.py": "",
    "sglang/srt/mem_cache/allocator/token.py": "class TokenToKVPoolAllocator:\n    def alloc(self, n): ...\n"
    "    def available_size(self): ...\n    def clear(self): ...\n",
}


@pytest.fixture
def old_sglang(tmp_path: Path) -> Iterator[None]:
    for rel, text in OLD_SGLANG.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    sys.path.insert(0, str(tmp_path))
    yield
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m == "sglang" or m.startswith("sglang.")]:
        del sys.modules[name]


def test_resolve_names_everything_missing(old_sglang: None) -> None:
    with pytest.raises(ShimConfigError) as err:
        hooks.resolve()
    msg = str(err.value)
    assert "sglang 0.4.0" in msg
    assert "KVCacheConfigurator._profile_available_bytes (missing)" in msg
    assert "TokenToKVPoolAllocator.alloc (no parameter need_size)" in msg
    assert "allocator.paged" in msg  # the whole module is missing
    assert "mode: static" in msg


def test_inactive_without_the_socket_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.SOCKET, raising=False)
    plugin.activate()  # nothing happens, nothing is imported from SGLang
    assert not settings.requested({})


def test_settings_name_every_problem() -> None:
    with pytest.raises(ShimConfigError) as err:
        settings.read(
            {
                settings.SOCKET: "/tmp/x.sock",
                settings.SLACK_TOKENS: "many",
                settings.VIRTUAL_KV_BYTES: "0",
                settings.MAP_AHEAD_BLOCKS: "-1",
                settings.IDLE_FILL_S: "soon",
            }
        )
    msg = str(err.value)
    for name in (
        settings.LIMIT_BYTES,
        settings.SLACK_TOKENS,
        settings.VIRTUAL_KV_BYTES,
        settings.STRICT_IDLE_CHECK,
        settings.MAP_AHEAD_BLOCKS,
        settings.IDLE_FILL_S,
    ):
        assert name in msg
    s = settings.read({**GOOD_ENV, settings.VIRTUAL_KV_BYTES: "42"})
    assert (s.limit_bytes, s.virtual_kv_bytes, s.slack_tokens) == (1 << 30, 42, 2048)
    assert s.map_ahead_blocks == 2
    made = settings.read(settings.server_env("/tmp/y.sock", 5, 6, 7))  # what adapters set
    assert made == settings.Settings("/tmp/y.sock", 5, 6, 7)
    made = settings.read(settings.server_env("/tmp/y.sock", 5, map_ahead_blocks=0))
    assert made == settings.Settings("/tmp/y.sock", 5, None, 2048, 0)
    s = settings.read({**GOOD_ENV, settings.IDLE_FILL_S: "0.25", settings.MAP_TRACE: "/tmp/m.txt"})
    assert (s.idle_fill_s, s.map_trace) == (0.25, "/tmp/m.txt")
    for bad in ("-1", "nan"):
        with pytest.raises(ShimConfigError, match=settings.IDLE_FILL_S):
            settings.read({**GOOD_ENV, settings.IDLE_FILL_S: bad})


@pytest.mark.parametrize(
    "env, needle",
    [
        ({settings.SOCKET: "/tmp/x.sock"}, settings.LIMIT_BYTES),
        ({**GOOD_ENV, settings.STRICT_IDLE_CHECK: "1"}, settings.STRICT_IDLE_CHECK),
    ],
)
def test_bad_environment_stops_the_process(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str) -> None:
    for k in (settings.LIMIT_BYTES, settings.STRICT_IDLE_CHECK):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SystemExit) as exc:
        plugin.activate()
    assert needle in str(exc.value.code)
    assert not isinstance(exc.value, Exception)  # SGLang's `except Exception` lets it through


def test_missing_cuda_python_stops_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(_driver, "_DRV", None)
    monkeypatch.setitem(sys.modules, "cuda", None)  # import cuda.bindings -> ImportError
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    with pytest.raises(SystemExit) as exc:
        plugin.activate()
    assert "cuda-python" in str(exc.value.code)


def test_old_sglang_stops_the_process(monkeypatch: pytest.MonkeyPatch, old_sglang: None) -> None:
    for k, v in GOOD_ENV.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(_driver, "_DRV", object())  # pretend cuda-python is there
    with pytest.raises(SystemExit) as exc:
        plugin.activate()
    assert "lacks what the shim patches" in str(exc.value.code)


def test_entry_point_dir_registers_the_plugin(tmp_path: Path) -> None:
    plugin.entry_point_dir(tmp_path)
    plugin.entry_point_dir(tmp_path)  # idempotent
    eps = [
        ep
        for d in importlib.metadata.distributions(path=[str(tmp_path)])
        for ep in d.entry_points
        if ep.group == plugin.ENTRY_POINT_GROUP
    ]
    assert [(ep.name, ep.value) for ep in eps] == [("chimera_cumem", "cumem_shim.plugin:activate")]
    assert eps[0].load() is plugin.activate
