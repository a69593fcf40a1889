from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.shapes.materialize import dummy_model_dir

tokenizers = pytest.importorskip("tokenizers")


@pytest.mark.parametrize("shape", ["tiny-llama", "llama-3.2-1b", "llama-3.3-70b"])
def test_tokenizer_matches_the_config(tmp_path: Path, shape: str) -> None:
    d = dummy_model_dir(shape, cache_dir=tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    tok = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    assert tok.get_vocab_size() == cfg["vocab_size"]
    assert tok.token_to_id("<s>") == cfg["bos_token_id"]
    eos = cfg["eos_token_id"]
    assert tok.token_to_id("</s>") == (eos[0] if isinstance(eos, list) else eos)
    ids = tok.encode("hello world").ids
    assert ids[0] == cfg["bos_token_id"] and len(ids) == 3
    tcfg = json.loads((d / "tokenizer_config.json").read_text())
    assert "messages" in tcfg["chat_template"]


def test_second_call_reuses_the_directory(tmp_path: Path) -> None:
    a = dummy_model_dir("tiny-llama", cache_dir=tmp_path)
    stamp = (a / "tokenizer.json").stat().st_mtime_ns
    assert dummy_model_dir("tiny-llama", cache_dir=tmp_path) == a
    assert (a / "tokenizer.json").stat().st_mtime_ns == stamp


def test_concurrent_builds_from_threads_of_one_process_all_succeed(tmp_path: Path) -> None:
    """Servers of one shape start at once from the supervisor's threads: every call returns a
    complete folder, and no build folder is left behind."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        dirs = list(pool.map(lambda _: dummy_model_dir("tiny-llama", cache_dir=tmp_path), range(6)))
    assert len(set(dirs)) == 1
    assert (dirs[0] / "tokenizer.json").is_file() and (dirs[0] / "config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-llama"]
