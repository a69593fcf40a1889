"""``python -m bench.gpu.pools``: a shape pool on the lent GPU (``--engine sglang``; ``--engine sim``
checks the script on a CPU). Measures what issue 15's targets name:

- **re-target, first token, from host RAM**: the target checkpoint's files are in the page
  cache (read once before); a request for a pooled model whose weights the pool's one server
  does not hold: client TTFT, and chimera's phases (update_weights_s: the load with its cache flush, probe_s)
  from its log. Target: p50 <= 1.0 s.
- **re-target from disk**: the same with the target's files evicted from the page cache
  (``posix_fadvise(DONTNEED)`` on every file). Target: p50 <= 1.3 x the disk-read floor, the
  floor being the checkpoint's bytes / the disk bandwidth measured here by reading it cold.
- **parked wake**: the server parked through the admin API, then a request for the model it
  holds: client TTFT and chimera_wake_seconds. Target: p50 <= 0.33 s.
- with ``--stage pinned``: the pool stages its checkpoints in the pinned holder
  (orchestrator/pools/pinned/), and "from host RAM" is the pinned push
  (``/update_weights_from_tensor``) instead of the page cache. The first switch to m1, once m0
  is staged and before m1 is, is the run's one from-disk sample; the re-targets to m0 and m1 that follow
  once both are staged are the from-host-RAM ones.

Checkpoints: ``--checkpoints`` distinct ones of real size (bench/gpu/checkpoints.py, random
values from distinct seeds); pooled models m<i> use ft-<i>; ``m0-copy`` reuses ft-0 under its
own name (and must answer exactly as m0). Writes OUT/pools-gpu.json and OUT/chimera.log.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.client.server import chimera_families
from bench.gpu.checkpoints import main as write_checkpoints
from bench.live.process import Chimera, start_chimera
from orchestrator.config.pooled import STAGES

ADMIN_KEY = "pools-bench"
CHUNK = 64 << 20


def files_of(ckpt: Path) -> list[Path]:
    return sorted(p for p in ckpt.iterdir() if p.is_file())


def evict(ckpt: Path) -> None:
    """Drop the checkpoint's pages from the page cache (no root needed for files we can open)."""
    for f in files_of(ckpt):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_all(ckpt: Path) -> tuple[int, float]:
    """Bytes read and seconds: the checkpoint read through once (cold after ``evict``)."""
    t0, n = time.monotonic(), 0
    for f in files_of(ckpt):
        with open(f, "rb", buffering=0) as fh:
            while chunk := fh.read(CHUNK):
                n += len(chunk)
    return n, time.monotonic() - t0


def start(cfg_file: Path, out: Path, engine: str) -> Chimera:
    env = {"CHIMERA_ADMIN_KEY": ADMIN_KEY}  # from the environment: never on argv
    return start_chimera(
        cfg_file, out, engine=engine, env=env, ready_timeout_s=550, hold_timeout_s=600, awake=("m0",), settle_all=False
    )


def ask(base: str, model: str) -> tuple[float, str]:
    """Client TTFT (first streamed content) and the greedy answer."""
    body = {"model": model, "messages": [{"role": "user", "content": "once upon a time"}], "max_tokens": 8}
    body |= {"temperature": 0, "stream": True}
    t0, ttft, text = time.monotonic(), None, ""
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                if delta and ttft is None:
                    ttft = time.monotonic() - t0
                text += delta
    return (ttft if ttft is not None else time.monotonic() - t0), text


def last_phases(log: Path) -> dict[str, float]:
    text = " ".join(log.read_text(errors="replace").split())  # rich wraps long lines
    found = re.findall(r"re-targeted .*? in ([0-9.]+) s (\{[^}]*\})", text)
    if not found:
        return {}
    total, phases = found[-1]
    return {"switch_s": float(total), **{k: float(v) for k, v in json.loads(phases.replace("'", '"')).items()}}


def last_wake_phases(log: Path) -> dict[str, float]:
    """The last ``woken in T s (resume R, continue C)`` line of chimera's log, and the check of
    the output that follows it beside the first requests (``checked in P s``)."""
    text = " ".join(log.read_text(errors="replace").split())
    found = re.findall(r"woken in ([0-9.]+) s \(resume ([0-9.]+), continue ([0-9.]+)(?:, probe ([0-9.]+))?\)", text)
    if not found:
        return {}
    out = {k: float(v) for k, v in zip(("wake_s", "resume_s", "continue_s", "probe_s"), found[-1], strict=True) if v}
    checked = re.findall(r"output after the wake checked in ([0-9.]+) s", text)
    if checked and "probe_s" not in out:
        out["probe_beside_s"] = float(checked[-1])
    return out


def staged_bytes(base: str) -> float:
    text = httpx.get(base + "/metrics", timeout=10).text
    return sum(
        x.value for fam in chimera_families(text) if fam.name == "chimera_pool_staged_bytes" for x in fam.samples
    )


def pinned_reps(
    ch: Chimera,
    a: argparse.Namespace,
    paths: list[Path],
    ref: dict[str, str],
    disk: list[float],
    ram: list[float],
    phases_disk: list[dict[str, float]],
    phases_ram: list[dict[str, float]],
    wrong: list[str],
) -> dict[str, float]:
    """``--stage pinned``: m1 from disk once (m1 not staged yet), then, once the holder holds
    both checkpoints, re-targets to m0 and m1 in turn from pinned host RAM."""
    if a.engine == "sglang":
        # m0 was asked (its reference): its staging reads host RAM; let it end before the disk
        # sample, which it would otherwise share the memory bus with (31 s instead of ~10 s)
        one = float(sum(f.stat().st_size for f in files_of(paths[0]))) * 0.99
        t0 = time.monotonic()
        while staged_bytes(ch.base) < one and time.monotonic() - t0 < 120:
            time.sleep(1)
        evict(paths[1])
    ttft, text = ask(ch.base, "m1")
    disk.append(ttft)
    phases_disk.append(last_phases(ch.log))
    ref["m1"] = text
    wrong += [] if text != ref["m0"] else ["m1 answered as m0"]
    t0, want = time.monotonic(), 0.0
    if a.engine == "sglang":
        want = float(sum(f.stat().st_size for p in paths[:2] for f in files_of(p))) * 0.99
    while staged_bytes(ch.base) < want and time.monotonic() - t0 < 400:
        ask(ch.base, "m0")  # popularity for both: the stager reads what is asked
        ask(ch.base, "m1")
        time.sleep(2)
    staging = {"staged_bytes": staged_bytes(ch.base), "staging_wait_s": time.monotonic() - t0}
    # the server holds m1 now: every ask below is a switch, and the last leaves m0 (the wakes' model)
    for rep, m in enumerate(["m0", "m1"] * a.reps + ["m0"]):
        ttft, text = ask(ch.base, m)
        ram.append(ttft)
        phases_ram.append(last_phases(ch.log))
        wrong += [] if text == ref[m] else [f"switch {rep}: {m} answered {text!r} from pinned RAM"]
    return staging


def wake_seconds(base: str) -> tuple[float, float]:
    text = httpx.get(base + "/metrics", timeout=10).text
    s = c = 0.0
    for fam in chimera_families(text):
        if fam.name == "chimera_wake_seconds":
            for x in fam.samples:
                s += x.value if x.name.endswith("_sum") else 0
                c += x.value if x.name.endswith("_count") else 0
    return s, c


def admin(base: str, iid: str, action: str) -> None:
    r = httpx.post(
        f"{base}/admin/instances/{iid}/{action}", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=120
    )
    r.raise_for_status()


def p50(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.pools", description=__doc__)
    p.add_argument("--engine", choices=("sglang", "sim"), default="sglang")
    p.add_argument("--shape", default="llama-3.1-8b")
    p.add_argument("--checkpoints", type=int, default=2, help="distinct real-size checkpoints (16 GB each for 8B)")
    p.add_argument("--ckpt-dir", type=Path, default=Path("/tmp/pools-ckpt"))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--gpu-memory-gb", type=float, default=80.0)
    p.add_argument("--stage", choices=STAGES, default="page_cache", help="where host RAM keeps checkpoints")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    ck = ["--shape", a.shape, "--count", str(a.checkpoints), "--out", str(a.ckpt_dir)]
    write_checkpoints(ck + (["--config-only"] if a.engine == "sim" else []))
    gen_s = time.monotonic() - t0
    paths = [a.ckpt_dir / f"ft-{i}" for i in range(a.checkpoints)]
    cfg = {
        "mode": "full",
        "host": {"gpus": 1, "gpu_memory_gb": a.gpu_memory_gb},
        "models": [
            *({"name": f"m{i}", "model_path": str(d), "pool": "p"} for i, d in enumerate(paths)),
            {"name": "m0-copy", "model_path": str(paths[0]), "pool": "p"},
        ],
        "pools": [{"name": "p", "servers": [{"gpus": [0]}]}],
    }
    if a.stage == "pinned":  # room for every checkpoint (16 GB each for 8B), pinned
        cfg["pools"][0] |= {"stage": "pinned", "stage_gb": 20 * a.checkpoints}
    cfg_file = a.out / "placements.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    report: dict[str, Any] = {"engine": a.engine, "shape": a.shape, "checkpoints_generated_s": gen_s}
    report["shared_weights"] = {"ft-0": ["m0", "m0-copy"], **{f"ft-{i}": [f"m{i}"] for i in range(1, a.checkpoints)}}
    if a.engine == "sglang":
        evict(paths[1])
        n, cold = read_all(paths[1])
        _, warm = read_all(paths[1])
        report |= {"ckpt_bytes": n, "disk_read_s": cold, "disk_bw": n / cold, "page_cache_read_s": warm}
    ch = start(cfg_file, a.out, a.engine)
    try:
        report["boot_s"] = time.monotonic() - t0 - gen_s
        ref = {m: ask(ch.base, m)[1] for m in ("m0",)}
        disk, ram, phases_disk, phases_ram, wrong = [], [], [], [], []
        if a.stage == "pinned":
            report["staging"] = pinned_reps(ch, a, paths, ref, disk, ram, phases_disk, phases_ram, wrong)
        for rep in range(a.reps if a.stage == "page_cache" else 0):
            # server holds m0 here; -> m1 from disk, then -> m0 from host RAM (its pages are cached)
            if a.engine == "sglang":
                evict(paths[1])
            ttft, text = ask(ch.base, "m1")
            disk.append(ttft)
            phases_disk.append(last_phases(ch.log))
            ref.setdefault("m1", text)
            wrong += [] if text == ref["m1"] and text != ref["m0"] else [f"rep {rep}: m1 answered {text!r}"]
            if a.engine == "sglang":
                read_all(paths[0])
            ttft, text = ask(ch.base, "m0")
            ram.append(ttft)
            phases_ram.append(last_phases(ch.log))
            wrong += [] if text == ref["m0"] else [f"rep {rep}: m0 answered {text!r}"]
        copy_ok = ask(ch.base, "m0-copy")[1] == ref["m0"]
        iid = "p-0@gpu0"
        wakes: list[float] = []
        for _ in range(a.reps):
            admin(ch.base, iid, "park")
            s0, c0 = wake_seconds(ch.base)
            ttft, text = ask(ch.base, "m0")
            s1, c1 = wake_seconds(ch.base)
            wakes.append(ttft)
            time.sleep(0.6)  # the output is checked 0.25 s after the wake, beside the requests: let its line land
            report.setdefault("wake_engine_s", []).append((s1 - s0) / max(1.0, c1 - c0))
            report.setdefault("wake_phases", []).append(last_wake_phases(ch.log))
            wrong += [] if text == ref["m0"] else [f"after wake m0 answered {text!r}"]
        report |= {
            "retarget_disk_ttft_s": disk,
            "retarget_ram_ttft_s": ram,
            "retarget_disk_phases": phases_disk,
            "retarget_ram_phases": phases_ram,
            "wake_ttft_s": wakes,
            "p50": {"retarget_disk": p50(disk), "retarget_ram": p50(ram), "wake": p50(wakes)},
            "wrong_outputs": wrong,
            "shared_checkpoint_answers_alike": copy_ok,
        }
        if "disk_read_s" in report:
            report["targets"] = {
                "retarget_ram_p50_le_1s": (p50(ram) or 1e9) <= 1.0,
                "retarget_disk_p50_le_1.3x_floor": (p50(disk) or 1e9) <= 1.3 * report["disk_read_s"],
                "wake_p50_le_0.33s": (p50(wakes) or 1e9) <= 0.33,
            }
    finally:
        ch.stop()
    (a.out / "pools-gpu.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report.get(k) for k in ("p50", "targets", "wrong_outputs", "disk_read_s")}, indent=1))
    return 0 if not report.get("wrong_outputs") and report.get("shared_checkpoint_answers_alike") else 1


if __name__ == "__main__":
    sys.exit(main())
