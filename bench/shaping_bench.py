"""What answer shaping (stop, max_tokens, emulated tools, JSON mode) adds per relayed chunk: a micro-benchmark.

`ChunkRelay.frames()` is the relay's per-chunk work: one upstream chunk in, its SSE frames out. This times it in this
process, with no server and no socket, on the chunks LMArenaBridge streams (one word of content each, as captured),
for a request that asks for nothing (the relay's untouched path) and for requests that ask for each kind of shaping,
interleaved round by round; the figure is the median over rounds of the mean time per chunk, and "added" is that
minus the untouched path's in the same round.

    bench/.venv/bin/python bench/shaping_bench.py            # 7 rounds of 2,000 chunks per case (~10 s)
    bench/.venv/bin/python bench/shaping_bench.py --rounds 3 --chunks 500
    # the plain path of an older commit's relay, for a before/after comparison:
    git archive 69c20f2 app | tar -x -C /tmp/before && python bench/shaping_bench.py --app /tmp/before --no-save

Writes bench/results/<date>-<host>-shaping.json and prints the table README.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# --app DIR times the app/ found in DIR instead (an older commit's, unpacked with `git archive`): --plain-only then.
APP_ROOT = Path(sys.argv[sys.argv.index("--app") + 1]).resolve() if "--app" in sys.argv else REPO
if str(APP_ROOT) not in sys.path:
    sys.path.insert(0, str(APP_ROOT))

from app.providers.base import ChatRequest, Chunk  # noqa: E402
from app.relay import ChunkRelay  # noqa: E402

try:
    from app.shaping import read_shaping  # noqa: E402
except ImportError:  # an app from before answer shaping: only the plain path exists
    read_shaping = None

WORDS = [f" word{i % 97}" for i in range(5000)]  # what the answer says, a word per chunk as the bridge sends it
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
STOPS = ["\nUser:", "\nSeraphina:", "###", "</s>"]  # SillyTavern's kind: names, separators, end tokens
# (name, request fields, the answer's chunks' text): none of the limits is reached before the answer ends.
CASES = [
    ("as is (no shaping)", {}, None),
    ("stop, 1 sequence", {"stop": STOPS[:1]}, None),
    ("stop, 4 sequences", {"stop": STOPS}, None),
    ("max_tokens", {"max_tokens": 1_000_000}, None),
    ("stop (4) + max_tokens", {"stop": STOPS, "max_tokens": 1_000_000}, None),
    ("tools, answered in text", {"tools": [TOOL]}, None),
    ("tools, text with '<' in every chunk", {"tools": [TOOL]}, [" a<b"] * len(WORDS)),
    ("json_object, one long object", {"response_format": {"type": "json_object"}}, ["{", '"k": "', *WORDS, '"}']),
]


def chunks(texts: list[str]) -> list[Chunk]:
    """Return the bridge's chunks for texts, parsed as the relay receives them (fresh objects: frames() edits them)."""
    made = []
    for text in texts:
        obj = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-5",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
        }
        raw = json.dumps(obj, ensure_ascii=False)
        made.append(Chunk(raw, json.loads(raw)))
    return made


def one_pass(fields: dict, texts: list[str]) -> float:
    """Return the mean seconds frames() took per chunk over one answer."""
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], **fields}
    chat = ChatRequest(body=body, model="gpt-5", stream=True)
    if fields:
        chat.shaping = read_shaping(body)
    relay = ChunkRelay(chat)
    answer = chunks(texts)
    out: list[bytes] = []
    started = time.perf_counter()
    for chunk in answer:
        relay.frames(chunk, out)
        if len(out) > 64:
            out.clear()  # as the relay writes each batch out
    elapsed = time.perf_counter() - started
    return elapsed / len(answer)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--app", type=Path, help="time the app/ in this folder (an older commit's) instead")
    parser.add_argument("--plain-only", action="store_true", help="only the plain path (for an app without shaping)")
    parser.add_argument("--no-save", action="store_true", help="print only; write no results file")
    args = parser.parse_args(argv)
    texts = WORDS[: args.chunks]
    cases = CASES[:1] if args.plain_only or read_shaping is None else CASES
    started_load = load()
    per_case: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    added: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for round_number in range(args.rounds):
        order = cases[round_number % len(cases) :] + cases[: round_number % len(cases)]  # rotated each round
        this_round = {name: one_pass(fields, (own or texts)[: len(texts) + 3]) for name, fields, own in order}
        for name, seconds in this_round.items():
            per_case[name].append(seconds)
            added[name].append(seconds - this_round[cases[0][0]])
    rows = [
        {
            "case": name,
            "us_per_chunk": statistics.median(per_case[name]) * 1e6,
            "added_us_per_chunk": statistics.median(added[name]) * 1e6,
            "rounds_us": [round(s * 1e6, 3) for s in per_case[name]],
        }
        for name, _, _ in cases
    ]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    changed = subprocess.run(["git", "status", "--porcelain", "app"], cwd=REPO, capture_output=True, text=True)
    app_from = "this work tree" if APP_ROOT == REPO else str(APP_ROOT)
    meta = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "commit": commit.stdout.strip() + ("+changes" if changed.stdout.strip() else ""),
        "app_from": app_from,
        "rounds": args.rounds,
        "chunks": len(texts),
        "load_at_start": started_load,
        "load_at_end": load(),
    }
    out = HERE / "results" / f"{datetime.now(UTC):%Y-%m-%d}-{meta['host']}-shaping.json"
    if not args.no_save:
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(
        f"{meta['when']}, Python {meta['python']}, {meta['cpus']} cores, app from {app_from} "
        f"(work tree at `{meta['commit']}`); {args.rounds} rounds "
        f"of {len(texts)} chunks per case; load average {started_load} at start, {meta['load_at_end']} at end."
    )
    print("\n| request asks for | µs per chunk | added µs per chunk |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['case']} | {row['us_per_chunk']:.2f} | {row['added_us_per_chunk']:+.2f} |")
    if not args.no_save:
        print(f"\n{out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
