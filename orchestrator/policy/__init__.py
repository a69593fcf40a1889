"""Pure policies: ``decide(snapshot, now) -> decision``. Nothing here may import a clock,
logging, asyncio, httpx or CUDA (tests/unit/test_architecture.py checks the imports), so the
same code runs in the live control loop, in tests and in the discrete-event simulator."""
