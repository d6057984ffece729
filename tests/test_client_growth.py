"""What clients can make the gateway keep: made-up model names share one metrics label; script events are paced."""

from __future__ import annotations

import sqlite3

from prometheus_client.parser import text_string_to_metric_families

from app import registration_tokens
from app.request_record import UNKNOWN_MODEL

HI = [{"role": "user", "content": "hi"}]


def series(client, name: str) -> list:
    text = client.get("/metrics").get_data(as_text=True)
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def test_made_up_model_names_share_one_metrics_label(app, client, auth):
    for number in range(40):
        response = client.post(
            "/v1/chat/completions", json={"model": f"made-up-{number}", "messages": HI}, headers=auth
        )
        assert response.status_code == 404
    assert client.post("/v1/chat/completions", json={"model": "gpt-5", "messages": HI}, headers=auth).status_code == 200
    app.extensions["analytics"].flush()
    totals = {(s.labels["model"], s.labels["status"]): s.value for s in series(client, "gateway_requests_total")}
    assert totals == {(UNKNOWN_MODEL, "404"): 40, ("gpt-5", "200"): 1}


def test_aliases_and_session_maps_keep_their_client_names(make_app, auth, admin):
    app = make_app(GATEWAY_MODEL_ALIASES="house-model=gpt-5")
    client = app.test_client()
    body = {"model": "house-model", "messages": HI}
    assert client.post("/v1/chat/completions", json=body, headers=auth).status_code == 200
    app.extensions["analytics"].flush()
    assert {s.labels["model"] for s in series(client, "gateway_requests_total")} == {"house-model"}


def _token(app, name="tab-one"):
    with app.app_context():
        return registration_tokens.issue(name, ["lmarena.ai"])[0]


def event(client, token, name="tab-one", **body):
    payload = {"domain": "lmarena.ai", "session_name": name, "kind": "info", **body}
    return client.post("/analytics/event", json=payload, headers={"X-Registration-Token": token})


def test_script_events_are_paced_per_token(make_app):
    app = make_app(GATEWAY_EVENT_RATE_PER_MINUTE=5)
    client = app.test_client()
    first, second = _token(app), _token(app, "tab-two")
    statuses = [event(client, first).status_code for _ in range(8)]
    assert statuses[:5] == [202] * 5 and statuses[5:] == [429] * 3
    refused = event(client, first)
    assert refused.get_json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) >= 1
    assert event(client, second, "tab-two").status_code == 202  # another script has its own allowance
    admin = {"Authorization": "Bearer sk-admin-test"}
    body = {"domain": "lmarena.ai", "session_name": "tab-one", "kind": "info"}
    assert client.post("/analytics/event", json=body, headers=admin).status_code == 202  # the admin is not paced
    app.extensions["analytics"].flush()
    with sqlite3.connect(app.config["GATEWAY_ANALYTICS_PATH"]) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM events WHERE kind = 'info' AND session_name = 'tab-one'")
        assert stored.fetchone()[0] == 6  # five from the script, one from the admin; nothing refused was kept


def test_an_oversized_event_detail_is_refused_and_not_stored(app, client):
    token = _token(app)
    refused = event(client, token, detail={"text": "x" * 2000})
    assert refused.status_code == 400 and refused.get_json()["error"]["param"] == "detail"
    assert event(client, token, detail={"step": "register", "status": 500}).status_code == 202


def test_made_up_tokens_share_their_address_allowance_on_an_open_gateway(make_app):
    client = make_app(GATEWAY_ADMIN_KEY="", GATEWAY_EVENT_RATE_PER_MINUTE=3).test_client()
    statuses = [event(client, f"v1.made-up.{n}").status_code for n in range(5)]
    assert statuses == [202, 202, 202, 429, 429]
