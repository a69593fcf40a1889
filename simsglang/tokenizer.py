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
from dataclasses import dataclass, replace
from typing import Literal

EOS_TOKEN_ID = 2  # Llama-2 style; what SGLang reports as `matched` when EOS stops a request
OUTPUT_ID_BASE = 1000  # output tokens are OUTPUT_ID_BASE + index into WORDS
FORCED_ID_BASE = 2000  # constrained output's tokens: FORCED_ID_BASE + a hash of their text
FORCED_IDS = 8000
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
    """The tokens one request will produce: ``length`` tokens, then it finishes with ``finish``.
    Free text is words drawn from ``seed``; constrained output (JSON) is ``forced``, one text
    piece per token. ``matched`` is the stop string that ended it, if one did."""

    seed: int
    length: int
    finish: Literal["length", "stop"]
    forced: tuple[str, ...] = ()
    matched: str | None = None

    def token(self, i: int) -> int:
        if self.forced:
            return FORCED_ID_BASE + _digest(self.forced[i].encode()) % FORCED_IDS
        key = self.seed.to_bytes(8, "little") + i.to_bytes(8, "little")
        return OUTPUT_ID_BASE + _digest(key) % len(WORDS)

    def tokens(self, start: int, stop: int) -> list[int]:
        return [self.token(i) for i in range(start, stop)]

    def piece(self, i: int) -> str:
        """The text of output token ``i``."""
        return self.forced[i] if self.forced else ToyTokenizer.decode([self.token(i)])

    def text(self, start: int, stop: int) -> str:
        return "".join(self.piece(i) for i in range(start, stop))

    def logprob(self, i: int) -> float:
        """A made-up log probability of output token ``i`` in [-3, 0), the same every time."""
        key = b"lp" + self.seed.to_bytes(8, "little") + i.to_bytes(8, "little")
        return -((_digest(key) % 3000) + 1) / 1000.0

    def finish_reason(self) -> dict[str, object]:
        """SGLang's finish_reason JSON (schedule_batch.FINISH_LENGTH / FINISH_MATCHED_TOKEN /
        FINISH_MATCHED_STR)."""
        if self.finish == "stop":
            return {"type": "stop", "matched": EOS_TOKEN_ID if self.matched is None else self.matched}
        return {"type": "length", "length": self.length}


def _stop_at(plan: OutputPlan, stop: Sequence[str]) -> OutputPlan:
    """The plan cut at the first token whose text completes one of the stop strings (SGLang's
    scheduler checks the decoded tail after each token, the strings in the request's order)."""
    stops = [x for x in stop if x]
    if not stops:
        return plan
    keep = max(len(x) for x in stops) - 1
    tail = ""
    for i in range(plan.length):
        tail = tail[len(tail) - keep :] if keep else ""
        tail += plan.piece(i)
        hit = next((x for x in stops if x in tail), None)
        if hit is not None:
            return replace(plan, length=i + 1, finish="stop", matched=hit)
    return plan


def prompt_key(prompt_ids: Sequence[int], seed: int | None) -> int:
    """A number drawn from a prompt and a sampling seed (what constrained output is drawn from)."""
    salt = b"key:" + (b"" if seed is None else b"seed=%d:" % seed)
    return _digest(salt + b"".join(t.to_bytes(8, "little", signed=True) for t in prompt_ids))


class ToyTokenizer:
    def __init__(self, vocab_size: int = 32000) -> None:
        self.vocab_size = max(vocab_size, FORCED_ID_BASE + FORCED_IDS)

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
    def plan(
        prompt_ids: Sequence[int],
        max_new_tokens: int,
        ignore_eos: bool,
        weights: str = "",
        *,
        seed: int | None = None,
        stop: Sequence[str] = (),
        forced: Sequence[str] = (),
    ) -> OutputPlan:
        """The output for a prompt: exactly ``max_new_tokens`` with ignore_eos, else the prompt's
        natural length capped by ``max_new_tokens`` (finish "stop" only if EOS came first).
        ``weights`` names the loaded weights: other weights (a fine-tune loaded with
        /update_weights_from_disk, or garbage after a release without CPU backup) give other
        output for the same prompt. ``seed`` (the request's sampling seed) picks other output,
        the same for the same seed. ``forced`` is constrained output (its natural length: EOS
        comes once the grammar is complete). Then the first ``stop`` string ends it."""
        salt = b"sim:" + weights.encode() + b":" + (b"" if seed is None else b"seed=%d:" % seed)
        key = _digest(salt + b"".join(t.to_bytes(8, "little", signed=True) for t in prompt_ids))
        natural = len(forced) if forced else NATURAL_MIN + key % (NATURAL_MAX - NATURAL_MIN + 1)
        if ignore_eos or natural >= max_new_tokens:
            plan = OutputPlan(key, max(0, max_new_tokens), "length", tuple(forced))
        else:
            plan = OutputPlan(key, natural, "stop", tuple(forced))
        if forced and len(forced) < plan.length:  # ignore_eos past the grammar's end: cannot write more
            plan = replace(plan, length=len(forced), finish="stop")
        return _stop_at(plan, stop)


def render_chat(messages: Sequence[dict[str, object]]) -> str:
    """A toy chat template: one ``<|role|>`` header per message, then the assistant's header."""
    parts = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        parts.append(f"<|{m.get('role', 'user')}|>\n{content or ''}\n")
    return "".join(parts) + "<|assistant|>\n"
