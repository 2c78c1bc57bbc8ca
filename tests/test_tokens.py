"""Client tokens: signed with the app's secret, refused when forged or foreign."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_sse_broker.tokens import MAX_TOKEN_LENGTH, load_token, make_token


def _app(secret: str | None) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = secret
    return app


def test_a_token_round_trips_to_its_client_id() -> None:
    with _app("k").app_context():
        assert load_token(make_token("alice")) == "alice"


def test_a_token_signed_with_another_secret_is_refused() -> None:
    with _app("one").app_context():
        token = make_token("alice")
    with _app("two").app_context():
        assert load_token(token) is None


def test_a_tampered_token_is_refused() -> None:
    with _app("k").app_context():
        token = make_token("alice")
        payload, _, signature = token.rpartition(".")
        assert load_token(make_token("bob").rpartition(".")[0] + "." + signature) is None
        assert load_token(payload + ".x" + signature) is None


@pytest.mark.parametrize("value", [None, "", 42, ["t"], "x" * (MAX_TOKEN_LENGTH + 1), "no-signature"])
def test_anything_but_a_signed_string_is_refused(value: t.Any) -> None:
    with _app("k").app_context():
        assert load_token(value) is None


def test_without_a_secret_key_tokens_still_work_within_the_process() -> None:
    with _app(None).app_context():
        assert load_token(make_token("alice")) == "alice"
