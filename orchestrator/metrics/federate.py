"""Re-exposes every awake engine's own ``sglang:*`` series on chimera's ``/metrics``, each
sample labelled with the chimera ``server`` (instance id) and ``chimera_model`` it came from,
so one scrape of chimera sees the whole host. SGLang's own labels (``model_name``...) are kept,
so SGLang's Grafana dashboard reads these series as they are; its ``instance`` is Prometheus'
target label (chimera), never overwritten here. Engines are scraped concurrently at request time with a
short timeout; an engine that does not answer is skipped and counted, never fails the scrape.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Iterator

import httpx

from orchestrator.metrics.registry import SERVER
from orchestrator.sglang.api import METRICS
from orchestrator.types import InstanceView

SCRAPE_TIMEOUT_S = 2.0  # SGLang answers /metrics in milliseconds; a busy one may take longer


async def engine_metrics(client: httpx.AsyncClient, views: Iterable[InstanceView]) -> bytes:
    """Exposition text of the ``sglang:*`` families of every instance with an address."""
    targets = [v for v in views if v.base_url and v.state.value == "awake"]
    texts = await asyncio.gather(*(_scrape(client, v) for v in targets))
    return merge((v, t) for v, t in zip(targets, texts, strict=True) if t is not None)


def merge(texts: Iterable[tuple[InstanceView, str]]) -> bytes:
    """The engines' ``sglang:*`` families as one exposition (text format 0.0.4): each family's
    HELP and TYPE once (the first engine's), then every engine's samples of it, each with
    ``server`` and ``chimera_model`` put first among its labels.

    Line by line, without parsing the samples: this runs on the proxy's event loop at every
    scrape, and six SGLang engines' exposition is thousands of lines (histograms per label
    set), which prometheus_client's parser took ~0.1 ms a line to read and re-render: a scrape
    held every request the proxy was forwarding for a third of a second. A sample line is
    ``name{labels} value [timestamp]`` or ``name value [timestamp]``; a metric name holds no
    ``{`` or space, so the labels are inserted right after the name and what follows is kept
    as it is."""
    heads: dict[str, dict[str, str]] = {}
    samples: dict[str, list[str]] = {}
    for view, text in texts:
        extra = f'{SERVER}="{_escape(view.id)}",chimera_model="{_escape(view.model)}"'
        for family, line in _family_lines(text, lambda name: name.startswith("sglang:")):
            if line[0] == "#":
                heads.setdefault(family, {}).setdefault(line.split(" ", 2)[1], line)
                samples.setdefault(family, [])
            elif line.startswith("sglang:") and (labelled := _labelled(line, extra)) is not None:
                samples[family].append(labelled)
    out: list[str] = []
    for family, lines in samples.items():
        head = heads[family]
        out += [head[k] for k in ("HELP", "TYPE") if k in head]
        out += lines
    return ("\n".join(out) + "\n").encode() if out else b""


# What a secondary proxy process (up --proxies N) counts itself: the request path's families,
# named as their groups are in the exposition (a counter's ``_total``; its ``_created`` group,
# a per-process timestamp, is left out)
PROXY_FAMILIES = frozenset(
    {
        "chimera_requests_total",
        "chimera_request_ttft_seconds",
        "chimera_request_e2e_seconds",
        "chimera_request_tpot_seconds",
        "chimera_slo_requests_total",
        "chimera_requests_in_flight",
    }
)


def with_proxies(own: bytes, proxies: Iterable[tuple[str, str]]) -> bytes:
    """chimera's own exposition with the request-path samples of its secondary proxy
    processes (``proxies``: their ``proxy`` label and exposition text) put into the same
    families, each labelled ``proxy="N"``: one scrape of any process on the port sees every
    request (the primary's own samples carry no ``proxy`` label). Line by line, as ``merge``;
    a family keeps one group (HELP, TYPE, then all its samples), as the text format requires."""
    extra: dict[str, list[str]] = {}
    for label, text in proxies:
        tag = f'proxy="{_escape(label)}"'
        for family, line in _family_lines(text, PROXY_FAMILIES.__contains__):
            if line[0] != "#" and (labelled := _labelled(line, tag)) is not None:
                extra.setdefault(family, []).append(labelled)
    if not extra:
        return own
    out: list[str] = []
    group = ""
    for line in own.decode().splitlines():
        if line.startswith("# HELP "):
            out += extra.pop(group, [])  # the previous family's group ends here
            group = line.split(" ", 3)[2]
        out.append(line)
    out += extra.pop(group, [])
    return ("\n".join(out) + "\n").encode()


def _family_lines(text: str, accept: Callable[[str], bool]) -> Iterator[tuple[str, str]]:
    """The non-empty lines of an exposition that belong to a family ``accept`` takes, each with
    that family's name: its HELP and TYPE lines, then its samples (other comments dropped)."""
    family: str | None = None
    for line in text.splitlines():
        if not line:
            continue
        if line[0] == "#":
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = parts[2] if accept(parts[2]) else None
                if family is not None:
                    yield family, line
        elif family is not None:
            yield family, line


def _labelled(line: str, labels: str) -> str | None:
    """The sample ``line`` with ``labels`` (``a="b",...``) put first among its labels; None for
    a line that is not a sample. A metric name holds no ``{`` or space: the labels go right
    after it, and what follows is kept as it is."""
    cut = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
    if cut < 0:
        return None
    if line[cut] == "{":
        sep = "" if line[cut + 1 : cut + 2] == "}" else ","
        return f"{line[: cut + 1]}{labels}{sep}{line[cut + 1 :]}"
    return f"{line[:cut]}{{{labels}}}{line[cut:]}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def _scrape(client: httpx.AsyncClient, view: InstanceView) -> str | None:
    assert view.base_url is not None
    try:
        r = await client.get(view.base_url + METRICS.path, timeout=SCRAPE_TIMEOUT_S)
    except httpx.HTTPError:
        return None
    return r.text if r.status_code == 200 else None
