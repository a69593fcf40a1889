"""Which mapped blocks a pending shrink empties: the *victims*. Pure: no CUDA, no clock.

A shrink under load cannot wait for blocks to come free by chance: SGLang's allocator hands
out whatever its free list holds, frees append slots from every block, and requests live for
seconds, so under continuous traffic no block ever empties. So ``ElasticKV`` quarantines the
victims: their free units leave SGLang's free list (``FreeList.hold``), units of a victim that
come free later are kept behind every other unit until the next sweep holds them too
(``FreeList.put_last``), nothing new lands in a victim, and a victim is unmapped once all of its
units are held. This module decides the victims at each sweep (``ElasticKV._reclaim``).

Rules (``choose``):
- never block 0 (SGLang's padding slot lives there);
- at most ``max_victims`` (the mapped blocks above what the limit, or the drain's effective
  limit, allows);
- the blocks kept must hold ``keep_units`` (the larger of the limit's units and the drain's
  effective limit): then every unit ``available()`` promises lies in a kept block, so an
  allocation within it never needs a victim (and ``limit.drain``'s headroom stays real);
- victims stay victims while the rules allow (they only empty: nothing lands in them); when
  fewer are allowed (the limit rose, the drain's room grew) the fullest are given back first;
- new victims are the emptiest blocks (fewest units in use), the highest-numbered first on a
  tie, so fully free blocks go first, as before quarantine.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping


def choose(
    current: Collection[int],
    used: Mapping[int, int],
    capacity: Callable[[int], int],
    keep_units: int,
    max_victims: int,
) -> frozenset[int]:
    """The victims. ``current``: the victims so far; ``used``: units in use in each mapped block
    (its keys are the mapped blocks); ``capacity``: allocatable units of a block; ``keep_units``:
    units the kept blocks must hold; ``max_victims``: the most victims allowed."""
    kept_capacity = sum(capacity(b) for b in used)
    victims: list[int] = []
    for b in sorted((b for b in current if b in used and b != 0), key=lambda b: (used[b], -b)):
        if len(victims) < max_victims and kept_capacity - capacity(b) >= keep_units:
            victims.append(b)
            kept_capacity -= capacity(b)
    chosen = set(victims)
    for b in sorted((b for b in used if b != 0 and b not in chosen), key=lambda b: (used[b], -b)):
        if len(victims) >= max_victims:
            break
        if kept_capacity - capacity(b) >= keep_units:
            victims.append(b)
            kept_capacity -= capacity(b)
    return frozenset(victims)
