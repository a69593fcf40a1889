"""The dashboard in a real browser: Debian's chromium (headless), driven by Playwright, against
`chimera-orch up` on the sim engine. The page must show the numbers /metrics has, and a park and
a wake through the admin API must show up without a reload. Saves a screenshot under
runs/test-artifacts/ (and into docs/img/ when CHIMERA_UPDATE_SCREENSHOT=1).

Playwright's own browser download is not used: `make test` (.ci/install-chromium) installs
Debian's chromium when /usr/bin/chromium is missing; without it this test is skipped, saying so.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.shapes import shape_dir
from tests.chimera_proc import Running, start_chimera

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "runs" / "test-artifacts"
SCREENSHOT = ROOT / "docs" / "img" / "dashboard.png"
KEY = "browser-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000  # bounded waits for the page's one-second polls
PLACEMENTS: dict[str, Any] = {
    "mode": "full",
    "host": {"gpus": 2, "gpu_memory_gb": 80},
    "models": [
        {
            "name": "tiny",
            "model_path": "tiny-llama",
            "slo": {"ttft_s": 0.5, "tpot_s": 0.05},
            "placements": [{"gpus": [0], "on": True}],
        },
        {
            "name": "llama-1b",
            "model_path": "meta-llama/Llama-3.2-1B-Instruct",
            "placements": [{"gpus": [0], "on": True}],
        },
        {"name": "qwen-7b", "model_path": "Qwen/Qwen2.5-7B-Instruct", "placements": [{"gpus": [1], "on": True}]},
        {"name": "lazy", "model_path": "tiny-llama", "placements": [{"gpus": [1], "on": False}]},
    ],
}

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")


@pytest.fixture(scope="module")
def chimera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (.ci/install-chromium)")
    run = start_chimera(
        tmp_path_factory.mktemp("dash"),
        PLACEMENTS,
        "sim",
        awake=["tiny", "llama-1b", "qwen-7b"],
        parked=("lazy",),
        timeout_s=90,
        env={"CHIMERA_SIM_SPEED": "0.02", "CHIMERA_ADMIN_KEY": KEY},
    )
    yield run
    run.stop()


def metric(base: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def cell(model: str, column: str) -> str:
    return f'tr[data-model="{model}"] td.{column}'


def test_the_page_shows_metrics_and_a_park_and_a_wake_live(chimera: Running, tmp_path: Path) -> None:
    for _ in range(3):
        r = httpx.post(
            f"{chimera.base}/v1/completions",
            json={"model": "tiny", "prompt": "hello", "max_tokens": 4, "stream": True},
            timeout=30,
        )
        assert r.status_code == 200
    requests = metric(chimera.base, "chimera_requests_total", model="tiny")
    assert requests == 3

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh --user-data-dir
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = browser.new_page()
            page.goto(f"{chimera.base}/dashboard")
            expect = sync_api.expect
            expect(page.locator(cell("tiny", "state"))).to_have_text("awake", timeout=WAIT_MS)
            # the numbers shown are /metrics' numbers
            expect(page.locator(cell("tiny", "requests"))).to_have_text(str(int(requests)), timeout=WAIT_MS)
            assert metric(chimera.base, "chimera_instance_state", model="tiny", state="awake") == 1
            expect(page.locator(cell("lazy", "state"))).to_have_text("parked")
            expect(page.locator(".gpu")).to_have_count(2)
            expect(page.locator("#activity canvas").first).to_be_visible(timeout=WAIT_MS)

            # a park and a wake through the admin API show up without a reload
            park = httpx.post(f"{chimera.base}/admin/instances/tiny@gpu0/park", headers=AUTH, timeout=60)
            assert park.status_code == 200, park.text
            expect(page.locator(cell("tiny", "state"))).to_have_text("parked", timeout=WAIT_MS)
            assert metric(chimera.base, "chimera_instance_state", model="tiny", state="parked") == 1
            expect(page.locator(cell("tiny", "parks"))).not_to_have_text("–", timeout=WAIT_MS)
            # its weights now sit in host RAM: in /metrics, the state and the page alike
            weights = metric(chimera.base, "chimera_host_memory_bytes", server="tiny@gpu0", kind="parked_weights")
            assert weights > 0
            host = httpx.get(f"{chimera.base}/dashboard/state", timeout=10).json()["host"]
            assert ["tiny@gpu0", "tiny", "parked_weights", int(weights)] in host["parts"]
            expect(page.locator("#host")).to_contain_text("tiny@gpu0 parked", timeout=WAIT_MS)
            wake = httpx.post(f"{chimera.base}/admin/instances/tiny@gpu0/wake", headers=AUTH, timeout=60)
            assert wake.status_code == 200, wake.text
            expect(page.locator(cell("tiny", "state"))).to_have_text("awake", timeout=WAIT_MS)
            expect(page.locator(cell("tiny", "wakes"))).not_to_have_text("–", timeout=WAIT_MS)
            # woken: nothing of it is parked; its backup is kept for the next park
            assert metric(chimera.base, "chimera_host_memory_bytes", server="tiny@gpu0", kind="parked_weights") == 0
            kept = metric(chimera.base, "chimera_host_memory_bytes", server="tiny@gpu0", kind="retained_weights")
            assert kept == weights
            expect(page.locator("#host")).to_contain_text("tiny@gpu0 retained", timeout=WAIT_MS)
            # the timeline of the model that parked and woke has its three stays at least
            assert page.locator(cell("tiny", "timeline") + " .strip span").count() >= 3
            expect(page.locator("#status")).not_to_have_class("status error")

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shot = ARTIFACTS / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("CHIMERA_UPDATE_SCREENSHOT") == "1":
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
        finally:
            browser.close()


def test_the_page_shows_which_weights_each_pooled_server_holds(tmp_path: Path) -> None:
    """A shape pool (docs/pools.md): the page lists what its server holds, and a re-target to
    another model's weights shows up without a reload, as /metrics' chimera_server_holds says."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (.ci/install-chromium)")
    ckpt = []
    for i in range(2):
        d = tmp_path / "ckpt" / f"ft-{i}"
        d.mkdir(parents=True)
        shutil.copy(shape_dir("tiny-llama") / "config.json", d / "config.json")
        ckpt.append(str(d))
    placements = {
        "mode": "full",
        "host": {"gpus": 1, "gpu_memory_gb": 80},
        "models": [
            {"name": "ft-a", "model_path": ckpt[0], "pool": "tiny"},
            {"name": "ft-b", "model_path": ckpt[1], "pool": "tiny"},
        ],
        "pools": [{"name": "tiny", "servers": [{"gpus": [0]}]}],
    }
    run = start_chimera(tmp_path, placements, "sim", awake=[], timeout_s=60, env={"CHIMERA_SIM_SPEED": "0.02"})
    try:

        def ask(model: str) -> None:
            r = httpx.post(
                f"{run.base}/v1/completions", json={"model": model, "prompt": "hi", "max_tokens": 2}, timeout=60
            )
            assert r.status_code == 200, r.text

        def held() -> str:
            return next(
                path
                for fam in text_string_to_metric_families(httpx.get(f"{run.base}/metrics", timeout=10).text)
                for s in fam.samples
                if s.name == "chimera_server_holds" and s.value == 1 and s.labels["server"] == "tiny-0@gpu0"
                for path in [s.labels["model_path"]]
            )

        ask("ft-a")
        assert held() == ckpt[0]
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=FLAGS
            )
            try:
                page = browser.new_page()
                page.goto(f"{run.base}/dashboard")
                expect = sync_api.expect
                server = page.locator('#holds li[data-server="tiny-0@gpu0"]')
                expect(server).to_contain_text("holds ft-a", timeout=WAIT_MS)
                expect(server).to_contain_text(ckpt[0])
                expect(page.locator('tr[data-model="ft-a"]')).to_have_attribute("data-held-by", "tiny-0@gpu0")
                expect(page.locator('tr[data-model="ft-b"]')).to_have_attribute("data-held-by", "")
                ask("ft-b")  # the one server is re-targeted to ft-b's weights
                assert held() == ckpt[1]
                expect(server).to_contain_text("holds ft-b", timeout=WAIT_MS)
                expect(server).to_contain_text(ckpt[1])
                expect(page.locator('tr[data-model="ft-b"]')).to_have_attribute("data-held-by", "tiny-0@gpu0")
                expect(page.locator('tr[data-model="ft-a"]')).to_have_attribute("data-held-by", "")
            finally:
                browser.close()
    finally:
        run.stop()
