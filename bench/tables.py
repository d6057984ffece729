"""Markdown tables of a run's results, for bench/README.md and the terminal."""

from __future__ import annotations

from report import BARE, BARE_FLOOR_MS, BARES

MET = {True: "✅", False: "❌"}


def _f(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def _table(title: str, header: list[str], rows: list[list[str]], numbers: bool = True) -> list[str]:
    """Return a markdown table under a bold title; the first column left-aligned, the others right for numbers."""
    if not rows:
        return []
    rule = "|---|" + ("---:|" if numbers else "---|") * (len(header) - 1)
    lines = ["", title, "", "| " + " | ".join(header) + " |", rule]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def markdown(result: dict) -> str:
    """Return the results section of bench/README.md."""
    meta, targets = result["meta"], result["targets"]
    summary = {(r["target"], r["mode"], r["concurrency"]): r for r in result["summary"]}
    dirty = " + uncommitted changes" if meta["dirty"] else ""
    out = [
        f"Run **{meta['date']}** on `{meta['host']}`: {meta['cpu']}, {meta['cores']} cores, "
        f"{meta['memory_gib']} GiB; Python {meta['python']}; Linux {meta['kernel']}; wrk {meta['wrk'] or 'absent'}; "
        f"gateway {meta['gateway_version']} at `{meta['commit']}`{dirty}.",
        f"Mode `{meta['mode']}`: {meta['rounds']} round(s) × {meta['duration_s']} s per cell after "
        f"{meta['warmup_s']} s warm-up, targets interleaved (order rotated each round), medians over rounds; "
        f"CPU pinning: {meta['pinning']}. Load average at start {meta['load_before']}, at end "
        f"{meta.get('load_after', '?')} (other work on the machine adds noise).",
    ]
    out += _table(
        "Which server produced each number:",
        ["target", "what", "status"],
        [[f"`{t['name']}`", t["label"], (t.get("unavailable") or "ok")[:300]] for t in targets],
        numbers=False,
    )

    def rows(mode: str, columns) -> list[list[str]]:
        found = []
        for t in targets:
            for c in meta["paced_concurrency"] if mode == "paced" else meta["concurrency"]:
                r = summary.get((t["name"], mode, c))
                if r:
                    found.append([f"`{t['name']}`", str(c), *columns(r), str(r["errors"])])
        return found

    out += _table(
        "**JSON answers** (wrk, closed loop; added = this target minus direct in the same round):",
        ["target", "c", "req/s", "p50 ms", "p95 ms", "p99 ms", "added p50 ms", "added p99 ms", "× direct p50"]
        + ["CPU ms/req", "upstream conns/req", "errors"],
        rows(
            "json",
            lambda r: [
                _f(r["rps"], 0),
                *(_f(r[f"latency_ms_{p}"]) for p in ("p50", "p95", "p99")),
                _signed(r["added_latency_ms_p50"]),
                _signed(r["added_latency_ms_p99"]),
                _f(r["ratio_latency_ms_p50"], 1),
                _f(r["cpu_ms_per_request"]),
                _f(r["upstream_connections_per_request"], 3),
            ],
        ),
    )
    out += _table(
        "**Streams** (10 content chunks back to back; bench/loadgen.py; TTFB = first content chunk, not headers):",
        ["target", "c", "streams/s", "total p50 ms", "total p99 ms", "TTFB p50 ms", "TTFB p99 ms"]
        + ["added TTFB p50", "added TTFB p99", "CPU ms/stream", "upstream conns/stream", "errors"],
        rows(
            "stream",
            lambda r: [
                _f(r["rps"], 0),
                _f(r["latency_ms_p50"]),
                _f(r["latency_ms_p99"]),
                _f(r["ttfb_ms_p50"]),
                _f(r["ttfb_ms_p99"]),
                _signed(r["added_ttfb_ms_p50"]),
                _signed(r["added_ttfb_ms_p99"]),
                _f(r["cpu_ms_per_request"]),
                _f(r["upstream_connections_per_request"], 3),
            ],
        ),
    )
    out += _table(
        "**Chunk relay** (the mock sends 10 chunks 50 ms apart, each stamped with its send time; "
        "delay = arrival − send):",
        ["target", "c", "chunk delay p50 ms", "p95 ms", "p99 ms", "added p50 ms", "added p99 ms", "errors"],
        rows(
            "paced",
            lambda r: [
                *(_f(r[f"chunk_delay_ms_{p}"]) for p in ("p50", "p95", "p99")),
                _signed(r["added_chunk_delay_ms_p50"]),
                _signed(r["added_chunk_delay_ms_p99"]),
            ],
        ),
    )
    out += _versus_bare(result, summary)
    out += _table(
        "**Memory** (sampled every 0.5 s through the run; peak RSS = the largest VmHWM of one process, start-up "
        "included; PSS splits shared pages between processes):",
        ["target", "processes", "peak RSS per process MiB", "median process peak MiB", "peak total PSS MiB"],
        [
            [f"`{t['name']}`", str(m["processes"])]
            + [_f(m[k], 1) for k in ("peak_rss_per_process_mib", "median_peak_rss_mib", "peak_pss_total_mib")]
            for t in targets
            if (m := t.get("memory")) and m.get("processes")
        ],
    )
    kinds: dict[tuple[str, str, int], dict[str, int]] = {}
    for cell in result["cells"]:
        for kind, count in (cell.get("errors") or {}).items():
            place = kinds.setdefault((cell["target"], cell["mode"], cell["concurrency"]), {})
            place[kind] = place.get(kind, 0) + count
    if kinds:
        out += ["", "**Errors by kind** (all rounds, warm-up included):", ""]
        out += [
            f"- `{target}` {mode} c={c}: " + ", ".join(f"{kind} × {n}" for kind, n in sorted(found.items()))
            for (target, mode, c), found in sorted(kinds.items())
        ]
    failed = [c for c in result["cells"] if "error" in c]
    if failed:
        out += ["", f"**{len(failed)} cell(s) failed** (not in the tables above):", ""]
        out += [f"- `{c['target']}` {c['mode']} c={c['concurrency']}: {c['error'][:200]!r}" for c in failed[:10]]
    out += _store_table(result.get("store") or [])
    out += _pools_table(result.get("pools") or [])
    out += _goals_table(result.get("goals") or [])
    out += _hold_tables(result)
    out += _stalls_table(result.get("stalls") or {})
    if result.get("profile"):
        out += [
            "",
            "**Profile** (py-spy `--gil`, waits left out: roughly the share of the process's Python CPU time, each "
            "sample counted for the innermost area it is in; stdlib calls count for their caller):",
            "",
        ]
        for prof in result["profile"]:
            out.append(
                f"- `{prof['target']}` {prof['mode']} c={prof['concurrency']} "
                f"({prof.get('busy_samples', 0)} busy samples): "
                + ", ".join(f"{g} {p:.0f}%" for g, p in prof.get("areas_self", {}).items() if p >= 1)
            )
    return "\n".join(out) + "\n"


# (mode, field, header) of the "against the bare relay" table; a field named bare_ratio_* is a ratio to bare-relay.
VERSUS_BARE = [
    ("json", "bare_ratio_rps", "req/s × bare"),
    ("json", "bare_ratio_cpu_ms_per_request", "CPU/req × bare"),
    ("json", "added_latency_ms_p50", "added p50 ms"),
    ("json", "bare_ratio_added_latency_ms_p50", "added p50 × bare"),
    ("stream", "bare_ratio_rps", "streams/s × bare"),
    ("stream", "bare_ratio_cpu_ms_per_request", "CPU/stream × bare"),
    ("stream", "added_ttfb_ms_p50", "added TTFB p50 ms"),
    ("stream", "bare_ratio_added_ttfb_ms_p50", "added TTFB × bare"),
    ("paced", "added_chunk_delay_ms_p50", "added chunk delay p50 ms"),
    ("paced", "bare_ratio_added_chunk_delay_ms_p50", "added chunk delay × bare"),
]


def _versus_bare(result: dict, summary: dict) -> list[str]:
    """Each target beside bare-relay in the same run: its "added" figures (over direct) and its ratios to bare-relay."""
    names = [t["name"] for t in result["targets"]]
    if BARE not in names:
        return []
    rows = []
    for name in names:
        if name in ("mock", "direct") or not any(k[0] == name for k in summary):
            continue
        for c in result["meta"]["concurrency"]:
            paired = name if name in BARES else (summary.get((name, "stream", c)) or {}).get("bare", BARE)
            row = [f"`{name}`", f"`{paired}`", str(c)]
            for mode, field, _ in VERSUS_BARE:
                r = summary.get((name, mode, c))
                if not field.startswith("bare_ratio_"):
                    row.append(_signed(r and r.get(field)))
                else:
                    row.append(_f(1.0 if name in BARES and r else r and r.get(field)))
            rows.append(row)
    return _table(
        f"**Against the bare relay** (bench/bare_relay.py under the same server as the target where it ran: "
        f"`{BARES[1]}` for `gw-gevent`, `{BARE}` for the others; in the same cells and rounds; × bare = this "
        "target ÷ its bare relay, median of per-round ratios; added = over direct, as above; – where not measured or "
        f"the bare relay added under {BARE_FLOOR_MS} ms):",
        ["target", "paired with", "c", *(header for _, _, header in VERSUS_BARE)],
        rows,
    )


def _store_table(store: list[dict]) -> list[str]:
    rows = []
    for s in store:
        if "lookups" not in s:
            rows.append([s["backend"], (s.get("unavailable") or s.get("error") or "?")[:200]] + [""] * 9)
            continue
        look, busy = s["lookups"]["latency_us"], s["lookups_while_1_writer"]["latency_us"]
        one, eight = s["register_1_writer"], s["register_8_writers"]
        rows.append(
            [s["backend"], f"{s['sessions']:,}", _f(s["lookups"]["ops_per_s"], 0), _f(look["p50"], 1)]
            + [_f(look["p99"], 1), _f(s["lookups_8_readers"]["ops_per_s"], 0)]
            + [f"{_f(busy['p99'], 1)} / {_f(busy['max'], 0)}"]
            + [_f(one["ops_per_s"], 1), f"{_f(one['latency_ms'].get('p50'))} / {_f(one['latency_ms'].get('p99'))}"]
            + [_f(eight["ops_per_s"], 1)]
            + [f"{_f(eight['latency_ms'].get('p50'))} / {_f(eight['latency_ms'].get('p99'))}"]
        )
    return _table(
        "**Session store** (app/store, one process per reader or writer; registrations alternate a new name and an "
        "existing one):",
        ["backend", "sessions", "lookups/s, 1 reader", "lookup p50 µs", "p99 µs", "lookups/s, 8 readers"]
        + ["lookup p99 / max µs while 1 writer"]
        + ["registrations/s, 1 writer", "p50 / p99 ms", "registrations/s, 8 writers", "p50 / p99 ms"],
        rows,
    )


def _reads(counts: dict[str, float], cold: bool = False) -> str:
    """Return the reads that reached a backend (file, SQLite, Redis), per request, with what each was."""
    found = {k: v for k, v in counts.items() if not k.startswith(("session store:", "breaker state:"))}
    if not found:
        return "0"
    total = _f(sum(found.values()), 0 if cold else 4)
    return f"{total} ({', '.join(f'{k} {_f(v, 0 if cold else 4)}' for k, v in found.items())})"


def _pools_table(pools: list[dict]) -> list[str]:
    rows = []
    for p in pools:
        if "scenarios" not in p:
            rows.append([p["backend"], (p.get("unavailable") or p.get("error") or "?")[:200]] + [""] * 10)
            continue
        for name, s in p["scenarios"].items():
            warm, cold = s["warm_reads"], s["cold_reads"]
            rows.append(
                [p["backend"], f"`{name}`", str(s["members_chosen"]), _f(s["per_s"], 0)]
                + [_f(s["p50_us"], 1), _f(s["p99_us"], 1), _signed(s["added_p50_us"]), _f(s["cold_us"] / 1000)]
                + [_f(sum(v for k, v in warm.items() if k.startswith("session store:")), 4)]
                + [_f(sum(v for k, v in warm.items() if k.startswith("breaker state: get")), 1)]
                + [_reads(warm), _reads(cold, cold=True)]
            )
    return _table(
        "**Pool member choice** (bench/pool_bench.py, in-process, no upstream: routing and the dispatcher's choice "
        "per request; `session` names one session, `pool-N` a pool of N active members; added = over `session`; "
        "reads per request: store calls, breaker records read (cached), and what reached a file, SQLite or Redis, "
        "warm and after the caches ran out):",
        ["backend", "routing", "members chosen", "routings/s", "p50 µs", "p99 µs", "added p50 µs", "cold ms"]
        + ["session store calls/req", "breaker records read/req", "backend reads/req, warm", "backend reads, cold"],
        rows,
    )


def _goals_table(goals: list[dict]) -> list[str]:
    if not goals or not goals[0]["measured"]:
        return []
    gateways = list(goals[0]["measured"])
    rows = []
    for goal in goals:
        cells = []
        for gateway in gateways:
            m = goal["measured"][gateway]
            cells.append(f"{_f(m['value'])} {({True: '✅', False: '❌'}).get(m['met'], '–')}")
        rows.append([f"{goal['goal']} {goal['sense']} {goal['target']:g}", *cells])
    title = "**Targets** (`GOALS` in `report.py`; ✅ met, ❌ not met, – not measured):"
    return _table(title, ["goal", *gateways], rows)


def _hold_tables(result: dict) -> list[str]:
    """The long-stream sweep: per target and level, streams held, chunk delays, /health, CPU and memory."""
    cells, meta = result.get("hold") or [], result.get("hold_meta") or {}
    if not cells:
        return []
    out = _table(
        "Which server held the long streams (each started on its own, fresh, then stopped):",
        ["target", "what", "status"],
        [[f"`{t['name']}`", t["label"], (t.get("unavailable") or "ok")[:300]] for t in result.get("hold_targets", [])],
        numbers=False,
    )
    seconds = meta.get("chunks", 0) * meta.get("gap_s", 0)
    rows = []
    for c in cells:
        head = [f"`{c['target']}`", f"{c['streams']:,}"]
        if "skipped" in c or "error" in c:
            rows.append(head + [c.get("skipped") or f"failed: {c['error'][:120]}"] + [""] * 13)
            continue
        delay, ttfb, health, mem = c["chunk_delay_ms"] or {}, c["ttfb_ms"] or {}, c["health_ms"], c["memory"]
        errors = sum(c["errors"].values())
        rows.append(
            head
            + [f"{c['held']:,}", f"{c['completed']:,}", _f(ttfb.get("p50")), _f(ttfb.get("p99"))]
            + [_f(delay.get("p50")), _f(delay.get("p99")), _f(delay.get("max"))]
            + [f"{_f(health['p50'])} / {_f(health['max'])}" if health else "–", str(c["health_failed"])]
            + [_f(c["cpu_core_pct"], 0), f"{_f(mem['rss_total_mib'], 0)} / {_f(mem['pss_total_mib'], 0)}", str(errors)]
            + [f"{c.get('load_before', '?').split()[0]} → {c.get('load_after', '?').split()[0]}"]
        )
    out += _table(
        f"**Long streams held at once** (bench/hold.py, bench/holdgen.py: each stream {seconds:g} s, a chunk every "
        f"{meta.get('gap_s', 0) * 1000:g} ms stamped by the mock; streams start evenly over max(5 s, N / 100 s); "
        "held = most streams receiving content at the same moment; completed = read to [DONE] with every chunk by "
        "the deadline; TTFB = request → first content chunk; chunk delay = arrival − the mock's send stamp; "
        "/health asked every 0.5 s on a new connection while all should be open, unanswered within 10 s = failed; "
        "CPU = the server's processes over the level, in % of one core; RSS = peak of the processes' summed "
        f"RSS / PSS; Passenger pool {meta.get('passenger_pool', '?')}):",
        ["target", "streams", "held", "completed", "TTFB p50 ms", "TTFB p99 ms", "chunk delay p50 ms", "p99 ms"]
        + ["max ms", "/health p50 / max ms", "/health failed", "CPU % of a core", "RSS / PSS MiB", "errors"]
        + ["load 1 min, before → after"],
        rows,
    )
    goals = result.get("hold_goals") or []
    out += _table(
        "**Long-stream targets** (`HOLD_GOALS` in `report.py`, at the sweep's largest level; ✅ met, ❌ not met, – not "
        "measured):",
        ["goal", "streams", "measured"],
        [
            [f"{g['goal']} {g['sense']} {g['target']:g}", f"{g['at_streams'] or '–'}"]
            + [f"{g['value'] if isinstance(g['value'], int) else _f(g['value'])} {MET.get(g['met'], '–')}"]
            for g in goals
        ],
    )
    return out


def _stalls_table(stalls: dict) -> list[str]:
    """How long each blocking part held gevent's hub (bench/hub_stalls.py)."""
    cases = stalls.get("cases") or {}
    rows = [
        [name] + [_f(v[k], 2) for k in ("operation_ms_p50", "operation_ms_max", "hub_stall_ms_p50", "hub_stall_ms_max")]
        for name, v in cases.items()
    ]
    return _table(
        f"**gevent's hub while the gateway blocks** (bench/hub_stalls.py: {stalls.get('rounds')} rounds each; hub "
        "stall = how late a greenlet waking every 1 ms woke during the operation, what every other stream of the "
        f"process waited; another process holds the write lock {stalls.get('hold_ms', 0):g} ms at a time):",
        ["operation", "operation p50 ms", "max ms", "hub stall p50 ms", "max ms"],
        rows,
    )
