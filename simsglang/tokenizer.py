"""A deterministic toy tokenizer and "model output" for the sim.

Prompt text -> tokens: words of up to 8 characters and single punctuation marks, each hashed into
the model's vocabulary (stable across processes: blake2b, not ``hash``). The output of a request
is a pure function of its prompt tokens: the same prompt always yields the same tokens and text
(so "identical output after wake" can be checked), and its natural length (where EOS would come)
is drawn from the prompt too, between NATURAL_MIN and NATURAL_MAX tokens.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

EOS_TOKEN_ID = 2  # Llama-2 style; what SGLang reports as `matched` when EOS stops a request
OUTPUT_ID_BASE = 1000  # output tokens are OUTPUT_ID_BASE + index into WORDS
NATURAL_MIN = 8
NATURAL_MAX = 256
_PIECE = re.compile(r"\w{1,8}|[^\w\s]")
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
# 256 two-syllable words plus punctuation: enough variety to look like text in a demo.
WORDS: tuple[str, ...] = tuple(
    f"{o1}{n1}{o2}{n2}" for o1 in _ONSETS[:8] for n1 in _NUCLEI[:4] for o2 in _ONSETS[8:] for n2 in _NUCLEI[4:5]
) + (",", ".")


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclass(frozen=True)
class OutputPlan:
    """The tokens one request will produce: ``length`` tokens, then it finishes with ``finish``."""

    seed: int
    length: int
    finish: Literal["length", "stop"]

    def token(self, i: int) -> int:
        key = self.seed.to_bytes(8, "little") + i.to_bytes(8, "little")
        return OUTPUT_ID_BASE + _digest(key) % len(WORDS)

    def tokens(self, start: int, stop: int) -> list[int]:
        return [self.token(i) for i in range(start, stop)]

    def finish_reason(self) -> dict[str, object]:
        """SGLang's finish_reason JSON (schedule_batch.FINISH_LENGTH / FINISH_MATCHED_TOKEN)."""
        if self.finish == "stop":
            return {"type": "stop", "matched": EOS_TOKEN_ID}
        return {"type": "length", "length": self.length}


class ToyTokenizer:
    def __init__(self, vocab_size: int = 32000) -> None:
        self.vocab_size = max(vocab_size, OUTPUT_ID_BASE + len(WORDS))

    def encode(self, text: str) -> list[int]:
        # ids 0-2 are reserved (pad, bos, eos) like Llama's
        return [3 + _digest(p.encode()) % (self.vocab_size - 3) for p in _PIECE.findall(text)]

    @staticmethod
    def decode(ids: Sequence[int]) -> str:
        """Text of output tokens (prompt tokens are hashes and do not decode)."""
        out = []
        for t in ids:
            i = t - OUTPUT_ID_BASE
            word = WORDS[i] if 0 <= i < len(WORDS) else f"<{t}>"
            out.append(word if word in (",", ".") else " " + word)
        return "".join(out)

    @staticmethod
    def plan(prompt_ids: Sequence[int], max_new_tokens: int, ignore_eos: bool, weights: str = "") -> OutputPlan:
        """The output for a prompt: exactly ``max_new_tokens`` with ignore_eos, else the prompt's
        natural length capped by ``max_new_tokens`` (finish "stop" only if EOS came first).
        ``weights`` names the loaded weights: other weights (a fine-tune loaded with
        /update_weights_from_disk, or garbage after a release without CPU backup) give other
        output for the same prompt."""
        salt = b"sim:" + weights.encode() + b":"
        seed = _digest(salt + b"".join(t.to_bytes(8, "little", signed=True) for t in prompt_ids))
        natural = NATURAL_MIN + seed % (NATURAL_MAX - NATURAL_MIN + 1)
        if ignore_eos or natural >= max_new_tokens:
            return OutputPlan(seed, max(0, max_new_tokens), "length")
        return OutputPlan(seed, natural, "stop")


def render_chat(messages: Sequence[dict[str, object]]) -> str:
    """A toy chat template: one ``<|role|>`` header per message, then the assistant's header."""
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(f"<|{m.get('role', 'user')}|>\n{content or ''}\n")
    return "".join(parts) + "<|assistant|>\n"
