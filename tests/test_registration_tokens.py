"""Registration tokens: minting, reading back only genuine ones, their scope, and the secret that signs them."""

from __future__ import annotations

import json
import os
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import registration_tokens
from app.config import SETTINGS, ConfigError, storage_file
from app.session_rules import NAME

# The same examples on every run (CI included), none remembered between runs, no per-example time limit.
REPRODUCIBLE = settings(derandomize=True, database=None, deadline=None)
DOMAINS = next(s.default for s in SETTINGS if s.name == "GATEWAY_SESSION_DOMAINS")
ZERO_ID = "00000000-0000-4000-8000-000000000000"
SID, MID = "3fa85f64-5717-4562-b3fc-2c963f66afa6", "4fa85f64-5717-4562-b3fc-2c963f66afa7"

secret_keys = st.binary(min_size=1, max_size=64)
domain_sets = st.frozensets(st.sampled_from(DOMAINS), min_size=1)
valid_names = st.from_regex(NAME, fullmatch=True)
any_tokens = st.text() | st.builds("v1.{}.{}".format, st.text(max_size=20), st.text(max_size=50))


@settings(REPRODUCIBLE, max_examples=300)
@given(
    secret=secret_keys,
    other=secret_keys,
    name=valid_names.filter(lambda n: n.strip(".")),
    domains=domain_sets,
    data=st.data(),
)
def test_regtoken_scope_reads_back_only_genuine_tokens(secret, other, name, domains, data):
    token = registration_tokens.mint(secret, name, domains)
    found = registration_tokens.scope(secret, token)
    assert (found.session_name, found.domains) == (name, domains)
    if other != secret:
        assert registration_tokens.scope(secret, registration_tokens.mint(other, name, domains)) is None
    at = data.draw(st.integers(0, len(token) - 1))
    changed = data.draw(st.characters().filter(lambda c: c != token[at]))
    assert registration_tokens.scope(secret, token[:at] + changed + token[at + 1 :]) is None


@settings(REPRODUCIBLE, max_examples=300)
@given(secret=secret_keys, token=any_tokens)
def test_regtoken_scope_of_any_string_is_none(secret, token):
    assert registration_tokens.scope(secret, token) is None


def test_register_with_any_token_is_refused_cleanly(client):
    @settings(REPRODUCIBLE, max_examples=60)
    @given(token=any_tokens.filter(bool))
    def check(token):
        # A server hands header bytes to the app as latin-1 text (PEP 3333).
        native = token.encode("utf-8").decode("latin-1")
        body = {"domain": DOMAINS[0], "session_name": "a", "session_id": ZERO_ID, "message_id": ZERO_ID}
        response = client.post("/session/register", json=body, environ_overrides={"HTTP_X_REGISTRATION_TOKEN": native})
        assert response.status_code == 401  # no token is genuine, and the admin key is not sent
        error = response.get_json()["error"]
        assert error.keys() == {"message", "type", "param", "code"}
        assert error["code"] in ("invalid_registration_token", "invalid_api_key")

    check()


def test_regtoken_names_each_domain_once_in_order():
    token = registration_tokens.mint(b"secret", "team-a", ["beta.lmarena.ai", "lmarena.ai", "beta.lmarena.ai"])
    claims = json.loads(registration_tokens._unb64(token.split(".")[1]))
    assert claims == {"n": "team-a", "d": ["beta.lmarena.ai", "lmarena.ai"]}


@pytest.mark.parametrize("claims", [{"d": ["lmarena.ai"]}, {"n": "a"}, {"n": "a", "d": 5}, [1, 2], "text"])
def test_regtoken_signed_without_the_right_claims_is_refused(claims):
    # Correctly signed, so only the claims' shape can refuse it.
    payload = registration_tokens._b64(json.dumps(claims).encode())
    token = f"v1.{payload}.{registration_tokens._signature(b'secret', payload)}"
    assert registration_tokens.scope(b"secret", token) is None


def test_regtoken_of_another_version_is_refused():
    token = registration_tokens.mint(b"secret", "team-a", ["lmarena.ai"])
    assert registration_tokens.scope(b"secret", "v2" + token[2:]) is None


def test_allows_only_its_session_on_its_domains(app):
    with app.app_context():
        token = registration_tokens.mint(app.extensions["regtoken_secret"], "team-a", ["lmarena.ai", "beta.lmarena.ai"])
        assert registration_tokens.allows(token, "lmarena.ai", "team-a")
        assert registration_tokens.allows(token, "beta.lmarena.ai", "team-a")
        assert not registration_tokens.allows(token, "canary.lmarena.ai", "team-a")
        assert not registration_tokens.allows(token, "lmarena.ai", "team-b")
        foreign = registration_tokens.mint(b"another gateway's secret", "team-a", ["lmarena.ai"])
        assert not registration_tokens.allows(foreign, "lmarena.ai", "team-a")


def register(client, token):
    body = {"domain": "lmarena.ai", "session_name": "team-a", "session_id": SID, "message_id": MID}
    return client.post("/session/register", json=body, headers={"X-Registration-Token": token})


def test_secret_is_generated_once_private_and_kept(make_app, app):
    path = storage_file(app.config, "userscript.secret")
    assert os.stat(path).st_mode & 0o777 == 0o600
    token = registration_tokens.mint(app.extensions["regtoken_secret"], "team-a", ["lmarena.ai"])
    restarted = make_app()  # same storage folder: the same secret
    assert restarted.extensions["regtoken_secret"] == app.extensions["regtoken_secret"]
    assert register(restarted.test_client(), token).status_code == 201


def test_configured_secret_is_used_and_no_file_written(make_app):
    app = make_app(GATEWAY_USERSCRIPT_SECRET="from the environment")
    assert app.extensions["regtoken_secret"] == b"from the environment"
    assert not os.path.exists(storage_file(app.config, "userscript.secret"))


def test_secret_another_process_is_still_writing_is_waited_for(make_app, tmp_path):
    path = tmp_path / "storage" / "userscript.secret"
    path.parent.mkdir()
    path.write_bytes(b"")  # created, not yet written: what a process starting a moment earlier leaves
    writer = threading.Timer(0.1, path.write_bytes, args=(b"written-by-the-other-process\n",))
    writer.start()
    try:
        app = make_app()
    finally:
        writer.join()
    assert app.extensions["regtoken_secret"] == b"written-by-the-other-process"


def test_secret_file_that_cannot_be_used_stops_the_start(make_app, tmp_path):
    (tmp_path / "storage" / "userscript.secret").mkdir(parents=True)
    with pytest.raises(ConfigError, match="GATEWAY_USERSCRIPT_SECRET is empty and .*userscript.secret cannot be"):
        make_app()
