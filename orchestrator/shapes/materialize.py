"""A model directory SGLang can boot with ``--load-format dummy``: the shape's config.json plus
a locally built tokenizer (no download). Weights are random, of the real size, so memory and
speed are realistic; outputs are not meaningful text.

The tokenizer is a WordLevel one whose vocabulary has exactly the config's ``vocab_size``, with
the BOS/EOS tokens at the config's ids, and a plain chat template so the OpenAI chat route works.
Needs the ``tokenizers`` package (part of the ``gpu`` and ``test`` extras), imported lazily.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.shapes.shape import shape_dir

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_WORDS = "hello world once upon a time the of and to in is it you that".split()


def default_cache_dir() -> Path:
    """Where materialized models live: $CHIMERA_CACHE_DIR or ~/.cache/chimera (read here only
    because it is a path default; see orchestrator/env.py for the registry)."""
    from orchestrator.env import Env

    return Path(Env.read().cache_dir)


def dummy_model_dir(shape: str, cache_dir: Path | None = None) -> Path:
    """Build (once) and return ``<cache>/models/<shape>``. Idempotent and safe to call again."""
    dest = (cache_dir or default_cache_dir()) / "models" / shape
    if (dest / "tokenizer.json").is_file() and (dest / "config.json").is_file():
        return dest
    cfg: dict[str, Any] = json.loads((shape_dir(shape) / "config.json").read_text())
    # A private build folder per call: servers of one shape start concurrently, from threads of
    # one process as well as from several processes, and each builds before the first rename.
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{dest.name}.tmp", dir=dest.parent))
    bos = int(cfg.get("bos_token_id", 1))
    eos_raw = cfg.get("eos_token_id", 2)
    eos = [int(e) for e in (eos_raw if isinstance(eos_raw, list) else [eos_raw])]
    _write_tokenizer(tmp, int(cfg["vocab_size"]), bos, eos)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": eos_raw}) + "\n")
    tmp.chmod(0o755)
    try:
        tmp.replace(dest)
    except OSError:  # another build was renamed first (a non-empty dest): keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
        if not (dest / "tokenizer.json").is_file():
            raise
    return dest


def _write_tokenizer(d: Path, vocab_size: int, bos: int, eos: list[int]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = {bos: "<s>", eos[0]: "</s>", **{e: f"<eot{k}>" for k, e in enumerate(eos[1:])}}
    unk_id = next(i for i in range(vocab_size) if i not in specials)
    specials[unk_id] = "<unk>"
    plain = [chr(c) for c in range(33, 127)] + _WORDS
    vocab: dict[str, int] = {}
    words = iter(plain)
    filler = 0
    for i in range(vocab_size):
        if i in specials:
            vocab[specials[i]] = i
            continue
        tok = next(words, None)
        if tok is None or tok in vocab:
            tok = f"w{filler}"
            filler += 1
        vocab[tok] = i
    tok_model = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok_model.pre_tokenizer = pre_tokenizers.Whitespace()
    tok_model.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    tok_model.add_special_tokens(list(specials.values()))
    tok_model.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "model_max_length": 131072,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=1,
        )
        + "\n"
    )
