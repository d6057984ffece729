"""Render the shared counters in Prometheus' text format (version 0.0.4)."""

from __future__ import annotations

from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: Any) -> str:
    # yupp2Api model ids hold newlines and quotes: escaped as the format requires.
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_set(**labels: Any) -> str:
    return "{" + ",".join(f'{name}="{_label(value)}"' for name, value in labels.items()) + "}"


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def render(snapshot: dict[str, Any], instance: str) -> str:
    """Return /metrics text for a queries.metrics_snapshot() result, every series labelled gateway_instance."""

    def _labels(**labels: Any) -> str:
        # Prometheus adds its own `instance` (the scraped address); this one names the gateway that answered.
        return _label_set(gateway_instance=instance, **labels)

    lines = [
        "# HELP gateway_requests_total Requests answered, by provider, model and HTTP status (all processes).",
        "# TYPE gateway_requests_total counter",
    ]
    counters = snapshot["counters"]
    for row in counters:
        lines.append(
            f"gateway_requests_total{_labels(provider=row['provider'], model=row['model'], status=row['status'])}"
            f" {row['count']}"
        )
    lines += [
        "# HELP gateway_request_errors_total Requests that ended in an error, streams included.",
        "# TYPE gateway_request_errors_total counter",
    ]
    for row in counters:
        lines.append(
            f"gateway_request_errors_total{_labels(provider=row['provider'], model=row['model'], status=row['status'])}"
            f" {row['errors']}"
        )
    lines += [
        "# HELP gateway_request_duration_seconds Time to answer a request (a stream: until it ended).",
        "# TYPE gateway_request_duration_seconds histogram",
    ]
    for row in counters:
        base = {"provider": row["provider"], "model": row["model"], "status": row["status"]}
        for bound, count in row["latency_buckets"]:
            lines.append(f"gateway_request_duration_seconds_bucket{_labels(**base, le=_le(bound))} {count}")
        lines.append(f"gateway_request_duration_seconds_sum{_labels(**base)} {row['latency_sum']}")
        lines.append(f"gateway_request_duration_seconds_count{_labels(**base)} {row['latency_count']}")
    lines += [
        "# HELP gateway_active_streams Streams open right now, in all processes.",
        "# TYPE gateway_active_streams gauge",
    ]
    for row in snapshot["active_streams"]:
        lines.append(f"gateway_active_streams{_labels(provider=row['provider'], model=row['model'])} {row['count']}")
    totals = snapshot.get("totals", {})
    lines += [
        "# HELP gateway_analytics_dropped_total Events not recorded because the queue was full.",
        "# TYPE gateway_analytics_dropped_total counter",
        f"gateway_analytics_dropped_total{_labels()} {totals.get('dropped', 0)}",
    ]
    return "\n".join(lines) + "\n"
