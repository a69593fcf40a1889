"""The CUDA MPS daemon of a run (orchestrator/supervisor/mps.py) against a stand-in script for
nvidia-cuda-mps-control (fake_mps_control.sh): start, attach, quit, death and restart, and how
host.gpu_sharing resolves (perf/sharing.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from orchestrator.config import parse_config
from orchestrator.control.events import Event, Exited, Started
from orchestrator.deployment import derive
from orchestrator.engines import get_engine
from orchestrator.perf.sharing import resolve
from orchestrator.supervisor import mps
from orchestrator.supervisor.mps import BinaryControl, MpsDaemon, MpsDirs, MpsError, for_run
from orchestrator.supervisor.supervisor import Supervisor

FAKE = str(Path(__file__).with_name("fake_mps_control.sh"))


class Ticks:
    """The watcher's clock: records each pause and returns at once (no wall-time sleep)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, s: float) -> None:
        self.pauses.append(s)
        await asyncio.sleep(0)


def dirs(tmp_path: Path) -> MpsDirs:
    """Kept after quit (pytest's folders are too deep for ``MpsDirs.under``'s own pipe path)."""
    return MpsDirs(tmp_path / "pipe", tmp_path / "log", private=False)


def daemon(tmp_path: Path, ticks: Ticks | None = None) -> MpsDaemon:
    return MpsDaemon(BinaryControl(FAKE), dirs(tmp_path), sleep=ticks or Ticks())


def calls(d: MpsDaemon) -> list[str]:
    return (d.dirs.pipe / "calls").read_text().split()


def pid(d: MpsDaemon) -> int:
    return int((d.dirs.pipe / "pid").read_text())


async def until(cond: Callable[[], bool], seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


def test_resolve__auto_is_mps_only_for_sglang_with_the_binary() -> None:
    assert resolve("auto", "sglang", True)[0] == "mps"
    assert resolve("auto", "sglang", False) == (
        "timeslice",
        "host.gpu_sharing: auto, no nvidia-cuda-mps-control on PATH",
    )
    assert resolve("auto", "sim", True)[0] == "timeslice"  # the sim engine models no MPS
    assert resolve("mps", "sim", False)[0] == "mps"  # forced (tests): the caller checks the binary
    assert resolve("timeslice", "sglang", True)[0] == "timeslice"


def test_config__gpu_sharing_is_validated_with_its_field_path() -> None:
    one = {"models": [{"name": "m", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0]}]}]}
    assert parse_config(one).host.gpu_sharing == "auto"  # MPS where it is available
    assert parse_config({**one, "host": {"gpu_sharing": "auto"}}).host.gpu_sharing == "auto"
    assert parse_config({**one, "host": {"gpu_sharing": "mps"}}).host.gpu_sharing == "mps"
    from orchestrator.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        parse_config({**one, "host": {"gpu_sharing": "MPS!"}}, source="f.yaml")
    assert exc.value.problems == ["f.yaml: host.gpu_sharing: must be one of auto, mps, timeslice (got 'MPS!')"]


def test_dirs__a_long_run_folder_gets_a_short_private_pipe_directory(tmp_path: Path) -> None:
    short = MpsDirs.under(Path("/r"))
    assert short.pipe == Path("/r/mps/pipe") and not short.private
    deep = MpsDirs.under(tmp_path / ("x" * 80))
    assert deep.private and len(str(deep.pipe)) < 60 and deep.log == tmp_path / ("x" * 80) / "mps" / "log"
    deep.pipe.rmdir()
    assert deep.env() == {"CUDA_MPS_PIPE_DIRECTORY": str(deep.pipe), "CUDA_MPS_LOG_DIRECTORY": str(deep.log)}


async def test_daemon__starts_answers_and_quits(tmp_path: Path) -> None:
    d = daemon(tmp_path)
    await d.start()
    assert calls(d) == ["-d", "get_server_list"] and await d.alive()
    await d.quit()
    assert not await d.alive() and calls(d)[-2:] == ["quit", "get_server_list"]


async def test_daemon__a_start_that_fails_says_why(tmp_path: Path) -> None:
    d = daemon(tmp_path)
    d.dirs.pipe.mkdir(parents=True)
    (d.dirs.pipe / "refuse").touch()
    with pytest.raises(MpsError, match=r"cannot start the CUDA MPS daemon \(exit code 1\): cannot start: refused"):
        await d.start()
    missing = MpsDaemon(BinaryControl(str(tmp_path / "nowhere")), dirs(tmp_path / "b"))
    with pytest.raises(MpsError, match="exit code 127"):
        await missing.start()


class InProcessControl:
    """nvidia-cuda-mps-control's answers without a process (the watcher's loop spawns one per
    check; the stand-in script covers the process path above): ``-d`` starts unless ``refuse``
    or already running; a command answers 0 while running (``quit`` stops it), else 1."""

    def __init__(self) -> None:
        self.running = False
        self.refuse = False
        self.starts = 0

    async def __call__(self, args: tuple[str, ...], stdin: str, env: Mapping[str, str]) -> tuple[int, str]:
        await asyncio.sleep(0)
        if args == ("-d",):
            if self.refuse:
                return 1, "cannot start: refused"
            if self.running:
                return 1, "An instance of this daemon is already running"
            self.running, self.starts = True, self.starts + 1
            return 0, ""
        if not self.running:
            return 1, "Cannot find MPS control daemon process"
        if stdin.strip() == "quit":
            self.running = False
        return 0, ""


async def test_daemon__death_is_noticed_engines_are_told_and_it_starts_again(tmp_path: Path) -> None:
    ticks, control = Ticks(), InProcessControl()
    d = MpsDaemon(control, dirs(tmp_path), sleep=ticks)
    await d.start()
    deaths: list[str] = []
    watcher = asyncio.create_task(d.watch(deaths.append))
    try:
        control.refuse = True  # the first attempts to start it again fail
        control.running = False  # it died
        await until(lambda: len(deaths) == 1)
        assert "stopped answering" in deaths[0]
        await until(lambda: d.check_s * 4 in ticks.pauses)  # pauses double while starts fail
        assert d.restarts == 0 and control.starts == 1
        control.refuse = False
        await until(lambda: d.restarts == 1)
        assert control.starts == 2 and await d.alive() and len(deaths) == 1
        assert max(ticks.pauses) <= 60.0  # the pause stops doubling at max_pause_s
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await d.quit()
    assert not control.running


async def test_for_run__sim_and_ray_fall_back_forced_mps_without_binary_refuses(tmp_path: Path) -> None:
    assert await for_run("auto", "sim", tmp_path, FAKE) == (None, "timeslice")
    assert await for_run("auto", "sglang", tmp_path, FAKE, ray=True) == (None, "timeslice")
    with pytest.raises(MpsError, match="not supported with --ray"):
        await for_run("mps", "sglang", tmp_path, FAKE, ray=True)
    with pytest.raises(MpsError, match="not on PATH"):
        await for_run("mps", "sglang", tmp_path, str(tmp_path / "nowhere"))
    d, sharing = await for_run("mps", "sim", tmp_path, FAKE)  # forced: runs even for the sim engine
    assert d is not None and sharing == "mps" and await d.alive()
    await d.quit()


async def test_for_run__auto_falls_back_to_timeslicing_when_the_daemon_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(MpsDirs, "under", classmethod(lambda cls, run: dirs(run)))
    (tmp_path / "pipe").mkdir(parents=True)
    (tmp_path / "pipe" / "refuse").touch()
    assert await for_run("auto", "sglang", tmp_path, FAKE) == (None, "timeslice")


ONE = {"models": [{"name": "a", "model_path": "llama-3.2-1b", "placements": [{"gpus": [0]}]}]}


async def test_supervisor__attaches_engines_kills_them_when_the_daemon_dies_and_quits_it(tmp_path: Path) -> None:
    """A dead daemon: every engine is killed and reported Exited (the control loop's restart
    with backoff takes it from there); stop_all quits the daemon."""
    dep = derive(parse_config(ONE), sharing="mps")
    events: list[Event] = []
    d = daemon(tmp_path / "run")
    await d.start()
    sup = Supervisor(get_engine("sim"), dep.config.host, tmp_path, post=events.append, deployment=dep, mps=d)
    spec = dep.config.instances[0]
    launch = await sup.launch(spec, 1, 2, None, None)
    assert launch.env["CUDA_MPS_PIPE_DIRECTORY"] == str(d.dirs.pipe)
    sup.start(spec)
    await until(lambda: any(isinstance(e, Started) for e in events), 60)
    sup.kill_every_engine("the CUDA MPS daemon stopped answering")
    await until(lambda: any(isinstance(e, Exited) for e in events), 30)
    await sup.stop_all()
    assert calls(d)[-1] == "quit" and not await d.alive()


async def test_supervisor__without_mps_engines_get_no_mps_environment(tmp_path: Path) -> None:
    dep = derive(parse_config(ONE))
    assert dep.sharing == "timeslice"
    sup = Supervisor(get_engine("sim"), dep.config.host, tmp_path, post=lambda ev: None, deployment=dep)
    launch = await sup.launch(dep.config.instances[0], 1, 2, None, None)
    assert not any(k.startswith("CUDA_MPS_") for k in launch.env)
    sup.watch_mps()  # no daemon: nothing to watch
    await sup.stop_all()
    assert mps.attached({"A": "1"}, None) == {"A": "1"}
