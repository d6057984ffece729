"""Turn the cells of a run into medians, paired "added" figures, the targets check, and markdown tables."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path

BARE = "bare-relay"  # bench/bare_relay.py: the relay with no feature, every target's "× bare" figures divide by it
# The same bare relay under the recommended server's gevent workers: gw-gevent's "× bare" divides by it when it ran,
# so that its ratios compare relays, the server held equal.
BARE_GEVENT = "bare-gevent"
BARES = (BARE, BARE_GEVENT)
# Below this the bare relay's added delay in a round is noise between rounds (its per-chunk delay is ~0.1 ms), and a
# ratio to it would be meaningless.
BARE_FLOOR_MS = 0.05
GOALS = {
    "added_p50_ms": 1.5,
    "added_p99_ms": 5.0,
    "added_ttfb_ms": 2.0,
    "chunk_relay_ms": 1.0,
    "c8_vs_litellm": 2.0,
    "store_lookup_ms": 1.0,
    "json_vs_bare": 0.95,  # JSON at parity with the bare relay (req/s), c=1 and c=8
    "streams_vs_bare": 0.9,  # short streams/s, c=1 and c=8
    "cpu_stream_vs_bare": 1.3,  # CPU per short stream, c=1 and c=8
    "chunk_delay_vs_bare": 2.0,  # added per-chunk delay, c=1
}
# The long-stream sweep (bench/hold.py): what the recommended server and `make run` must hold.
HOLD_GOALS = {
    "recommended": "gw-gevent",
    "recommended_streams": 1000,
    "recommended_chunk_p99_ms": 50.0,
    "recommended_rss_mib": 400.0,
    "make_run": "gw-waitress",
    "make_run_streams": 256,
}


def bare_for(target: str, ran: set[str]) -> str:
    """Return the bare relay target's figures are paired with: under its own server when that ran."""
    return BARE_GEVENT if target == "gw-gevent" and BARE_GEVENT in ran else BARE


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _pick(cell: dict, figure: str, stat: str) -> float | None:
    block = cell.get(figure)
    return block.get(stat) if isinstance(block, dict) else None


def _ratio(mine: float | None, theirs: float | None) -> float | None:
    return mine / theirs if mine is not None and theirs else None


def _rounds(cells: list[dict], target: str) -> dict[tuple[str, int, int], dict]:
    """Return target's good cells by (mode, concurrency, round)."""
    return {(c["mode"], c["concurrency"], c["round"]): c for c in cells if c["target"] == target and "error" not in c}


def versus_bare(group: list[dict], bare: dict, direct: dict) -> dict:
    """Return medians of per-round ratios to bare-relay in the same cell: throughput, CPU, and each p50 delay the
    two add on top of direct (None where the bare relay added less than BARE_FLOOR_MS in that round)."""
    ratios: dict[str, list] = defaultdict(list)
    for cell in group:
        key = (cell["mode"], cell["concurrency"], cell["round"])
        ref, base = bare.get(key), direct.get(key)
        if ref is None:
            continue
        for field in ("rps", "cpu_ms_per_request"):
            ratios[f"bare_ratio_{field}"].append(_ratio(cell.get(field), ref.get(field)))
        for figure in ("latency_ms", "ttfb_ms", "chunk_delay_ms"):
            mine, theirs, zero = (_pick(c, figure, "p50") if c else None for c in (cell, ref, base))
            if None not in (mine, theirs, zero) and theirs - zero >= BARE_FLOOR_MS:
                ratios[f"bare_ratio_added_{figure}_p50"].append((mine - zero) / (theirs - zero))
    return {name: _median(values) for name, values in ratios.items()}


def summarize(cells: list[dict]) -> dict[tuple[str, str, int], dict]:
    """Return {(target, mode, concurrency): medians over rounds, with "added" paired to direct in the same round
    and, when bare-relay ran, "× bare" ratios paired to it the same way}."""
    groups: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for cell in cells:
        if "error" not in cell:
            groups[(cell["target"], cell["mode"], cell["concurrency"])].append(cell)
    direct = _rounds(cells, "direct")
    bares = {name: _rounds(cells, name) for name in BARES}
    ran = {name for name, found in bares.items() if found}
    summary = {}
    for key, group in groups.items():
        _, mode, concurrency = key
        row: dict = {"rounds": len(group), "client": group[0]["client"]}
        row["rps"] = _median([c["rps"] for c in group])
        row["cpu_ms_per_request"] = _median([c.get("cpu_ms_per_request") for c in group])
        row["errors"] = sum(sum(c["errors"].values()) for c in group)
        row["upstream_connections_per_request"] = _median([_pick(c, "upstream", "per_request") for c in group])
        for figure in ("latency_ms", "ttfb_ms", "chunk_delay_ms"):
            for stat in ("p50", "p95", "p99"):
                row[f"{figure}_{stat}"] = _median([_pick(c, figure, stat) for c in group])
                added, ratio = [], []
                for cell in group:
                    base = direct.get((mode, concurrency, cell["round"]))
                    mine, theirs = _pick(cell, figure, stat), _pick(base, figure, stat) if base else None
                    if mine is not None and theirs is not None:
                        added.append(mine - theirs)
                        ratio.append(mine / theirs if theirs else None)
                row[f"added_{figure}_{stat}"] = _median(added)
                row[f"ratio_{figure}_{stat}"] = _median(ratio)
        if key[0] not in ("direct", *BARES) and bares[bare_for(key[0], ran)]:
            row["bare"] = bare_for(key[0], ran)
            row.update(versus_bare(group, bares[row["bare"]], direct))
        summary[key] = row
    return summary


def check_goals(summary: dict, store: list[dict], gateways: list[str]) -> list[dict]:
    """Return one row per goal in GOALS: the goal, and per gateway server the measured value and whether met."""

    def get(target: str, mode: str, c: int, field: str) -> float | None:
        return summary.get((target, mode, c), {}).get(field)

    litellm_c8 = get("litellm", "json", 8, "rps")
    file_store = next((s for s in store if s.get("backend") == "json" and "lookups" in s), None)
    lookup_p99 = file_store["lookups"]["latency_us"]["p99"] / 1000 if file_store else None
    goals = [
        (
            "added latency p50, JSON, c=1 (ms)",
            "≤",
            GOALS["added_p50_ms"],
            lambda t: get(t, "json", 1, "added_latency_ms_p50"),
        ),
        (
            "added latency p99, JSON, c=1 (ms)",
            "≤",
            GOALS["added_p99_ms"],
            lambda t: get(t, "json", 1, "added_latency_ms_p99"),
        ),
        (
            "added TTFB p50, stream, c=1 (ms)",
            "≤",
            GOALS["added_ttfb_ms"],
            lambda t: get(t, "stream", 1, "added_ttfb_ms_p50"),
        ),
        (
            "chunk relay delay p50, c=1 (ms)",
            "≤",
            GOALS["chunk_relay_ms"],
            lambda t: get(t, "paced", 1, "added_chunk_delay_ms_p50"),
        ),
        (
            "req/s at c=8 ÷ LiteLLM's (JSON)",
            "≥",
            GOALS["c8_vs_litellm"],
            lambda t: get(t, "json", 8, "rps") / litellm_c8 if litellm_c8 and get(t, "json", 8, "rps") else None,
        ),
        ("session lookup p99 at 10k sessions, JSON store (ms)", "≤", GOALS["store_lookup_ms"], lambda t: lookup_p99),
    ]
    for c in (1, 8):
        goals += [
            (
                f"JSON req/s × bare, c={c}",
                "≥",
                GOALS["json_vs_bare"],
                lambda t, c=c: get(t, "json", c, "bare_ratio_rps"),
            ),
            (
                f"streams/s × bare, c={c}",
                "≥",
                GOALS["streams_vs_bare"],
                lambda t, c=c: get(t, "stream", c, "bare_ratio_rps"),
            ),
            (
                f"CPU per stream × bare, c={c}",
                "≤",
                GOALS["cpu_stream_vs_bare"],
                lambda t, c=c: get(t, "stream", c, "bare_ratio_cpu_ms_per_request"),
            ),
        ]
    goals.append(
        (
            "added chunk delay × bare, c=1",
            "≤",
            GOALS["chunk_delay_vs_bare"],
            lambda t: get(t, "paced", 1, "bare_ratio_added_chunk_delay_ms_p50"),
        )
    )
    rows = []
    for label, sense, goal, measure in goals:
        row = {"goal": label, "sense": sense, "target": goal, "measured": {}}
        for gateway in gateways:
            value = measure(gateway)
            met = None if value is None else (value <= goal if sense == "≤" else value >= goal)
            row["measured"][gateway] = {"value": value, "met": met}
        rows.append(row)
    return rows


def write_readme(readme: Path, section: str) -> None:
    """Replace what is between `<!-- results -->` and `<!-- /results -->` in readme."""
    text = readme.read_text()
    pattern = re.compile(r"(<!-- results -->\n).*?(<!-- /results -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no <!-- results --> ... <!-- /results --> markers")
    readme.write_text(pattern.sub(lambda m: m.group(1) + section + m.group(2), text))


def check_hold_goals(cells: list[dict]) -> list[dict]:
    """Return the long-stream goals with what the sweep measured: the recommended server's and `make run`'s."""
    found = {(c["target"], c["streams"]): c for c in cells if "held" in c}
    top = max((n for t, n in found if t == HOLD_GOALS["recommended"]), default=None)
    best = found.get((HOLD_GOALS["recommended"], top)) if top else None
    mine = found.get((HOLD_GOALS["make_run"], HOLD_GOALS["make_run_streams"]))
    delay = (best or {}).get("chunk_delay_ms") or {}
    rows = [
        ("recommended server: streams held at once", "≥", HOLD_GOALS["recommended_streams"], best and best["held"]),
        ("recommended server: per-chunk delay p99 (ms)", "≤", HOLD_GOALS["recommended_chunk_p99_ms"], delay.get("p99")),
        (
            "recommended server: RSS, all processes (MiB)",
            "≤",
            HOLD_GOALS["recommended_rss_mib"],
            best and best["memory"]["rss_total_mib"],
        ),
        ("`make run`: streams held at once", "≥", HOLD_GOALS["make_run_streams"], mine and mine["held"]),
        ("`make run`: /health probes unanswered while they are held", "≤", 0, mine and mine["health_failed"]),
    ]
    return [
        {
            "goal": label,
            "sense": sense,
            "target": goal,
            "value": value,
            "met": None if value is None else (value <= goal if sense == "≤" else value >= goal),
            "at_streams": top if label.startswith("recommended") else HOLD_GOALS["make_run_streams"],
        }
        for label, sense, goal, value in rows
    ]
