"""Synthetic prompts of a requested token count (no prompt text ships with the traces).

On the sim engine the count is exact. Its toy tokenizer (simsglang/tokenizer.py)
makes one token of every word of up to 8 characters, and the server adds a BOS token; the chat
route also adds its template (``<|user|>\\n...\\n<|assistant|>\\n`` = 11 tokens). So a prompt
of N tokens is N - 1 words on /v1/completions and /generate, N - 12 on /v1/chat/completions
(tests/unit/test_bench_client.py checks this against the sim's tokenizer).

On real SGLang the words are common English words that are about one token each for Llama and
Qwen tokenizers, so the count is approximate (the chat template differs too); the client records
the prompt tokens the server reports (``usage.prompt_tokens``, ``meta_info.prompt_tokens``).
For exact counts use token ids (``ids=True``, /v1/completions and /generate only): ids are drawn
from [1000, 30000), valid in every supported vocabulary.

Every request gets its own seeded word sequence, so a radix (prefix) cache finds nothing to share.
"""

from __future__ import annotations

import random

Route = str  # "/v1/chat/completions" | "/v1/completions" | "/generate"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GENERATE = "/generate"
ROUTES = (CHAT, COMPLETIONS, GENERATE)

BOS_TOKENS = 1
CHAT_TEMPLATE_TOKENS = 11  # "<", "|", "user", "|", ">", then the same for "assistant"
ID_RANGE = (1000, 30000)

WORDS: tuple[str, ...] = tuple(
    """
the of and to in is it you that he was for on are with as his they be at one have this from
or had by word but what some we can out other were all there when up use your how said an each
she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place
made live where after back little only round man year came show every good me give our under
name very through just form great think say help low line differ turn cause much mean before
move right boy old too same tell does set three want air well also play small end put home read
hand port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth
""".split()
)


def overhead_tokens(route: Route) -> int:
    """Tokens the sim adds around the prompt's words on ``route``."""
    return BOS_TOKENS + (CHAT_TEMPLATE_TOKENS if route == CHAT else 0)


def prompt_words(n_tokens: int, route: Route, seed: int) -> str:
    """Text that the sim counts as ``n_tokens`` prompt tokens on ``route`` (at least one word:
    shorter requests than the route's overhead come out longer)."""
    n_words = max(1, n_tokens - overhead_tokens(route))
    return " ".join(random.Random(seed).choices(WORDS, k=n_words))


def prompt_ids(n_tokens: int, seed: int) -> list[int]:
    """Exactly ``n_tokens`` token ids (the server adds no BOS to ids)."""
    rng = random.Random(seed)
    return [rng.randrange(*ID_RANGE) for _ in range(max(1, n_tokens))]
