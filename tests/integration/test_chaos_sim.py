"""Short versions of the chaos bench (bench/chaos) on the sim engine: a fault under load, and
every request ends within its bound with an answer or a clean error envelope; chimera serves
again afterwards. A stop of chimera (SIGUSR1) loses nothing: new connections are dropped while
it drains (the client retries), the ones let in are answered. A kill -9 cannot answer the
requests in flight on the killed process: those are ``killed`` (a connection reset of a request
sent before it was gone), bounded by the load's concurrency, and nothing after them is lost."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bench.chaos.scenarios import SCENARIOS, Result, Timing

pytestmark = pytest.mark.slow

SHORT = Timing(warmup_s=1.0, after_s=4.5, settle_s=0.5, workers=4, bound_s=15.0)
RESTARTS = {"restart-usr1", "restart-kill"}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_no_request_is_lost_or_hung(name: str, tmp_path: Path) -> None:
    res: Result = asyncio.run(SCENARIOS[name](tmp_path, SHORT))
    print(f"\n{name}: {res.counts} recovery {res.recovery_s} s {res.notes}")
    assert res.counts["hung"] == 0, res.examples
    # a clean error names no engine address or port (engine-kill: the 502 of a crashed engine)
    assert not re.search(r"127\.0\.0\.1|localhost|:\d{4,5}\b", res.examples.get("error", "")), res.examples
    assert res.counts["ok"] > 0 and res.recovery_s is not None  # served again after the fault
    if name in RESTARTS:
        assert res.counts["reset"] == 0, res.examples
        assert res.counts["killed"] <= (SHORT.workers if name == "restart-kill" else 0), res.examples
        assert res.notes == ["engines re-adopted"]
    elif name == "fd-exhaustion":
        # never refused; past the linger slots the oldest refusal is closed for the new one, and
        # when every lingering one is young (idle clients reconnecting in bursts) a load request
        # among them may be closed before it reads its 503: a few of the load's, not its bulk
        assert res.counts["refused"] == 0 and res.counts["reset"] <= res.sent // 20, res.examples
    else:
        assert res.counts["reset"] == 0, res.examples
        assert res.counts["refused"] == 0
    if name == "slowloris":  # every slow client cut by chimera's header timeout, with a 408
        assert res.peer_ends == {"408": 200}, res.notes
    if name == "fd-exhaustion":  # idle clients beyond the budget shed with 503, the others cut by 408
        assert {"408", "503"} <= set(res.peer_ends) and "reset" not in res.peer_ends, res.notes
        assert res.after is not None and res.after.fds < 64, res.after  # back from the descriptor limit
    if name == "disconnects":
        assert res.counts["left"] > 0 and "engine running/queued after the load: 0.0" in res.notes
    assert res.after is not None and res.before is not None
    if name != "wake-failure":  # its baseline is before the woken engine's pool and scraper connections
        assert res.after.fds <= res.before.fds + 4, (res.before, res.after)  # nothing leaks per request
