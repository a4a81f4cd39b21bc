"""The app before the engine exists, streaming text deltas, chat templates, error messages."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from graphpilot.runtime.config import EngineConfig
from graphpilot.runtime.server.admin import create_admin_app
from graphpilot.runtime.server.app import ServerSettings, create_app, validation_message
from graphpilot.runtime.server.loop import AsyncEngine
from graphpilot.runtime.server.text import DEFAULT_CHAT_TEMPLATE, ChatTemplate, TemplateError, TextDelta


@pytest.fixture
def loading(tmp_path):
    """An app whose engine has not been built (the lifespan is not run)."""
    runtime = AsyncEngine(EngineConfig(model=str(tmp_path)))
    return runtime, TestClient(create_app(runtime, ServerSettings("tiny", max_request_bytes=1000)))


def test_health_answers_while_ready_is_503(loading):
    _, client = loading
    assert client.get("/health").json() == {"status": "ok"}
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "loading"


def test_requests_before_the_engine_get_503(loading):
    _, client = loading
    r = client.post("/v1/completions", json={"model": "tiny", "prompt": "hi"})
    assert r.status_code == 503
    assert "still loading" in r.json()["error"]["message"]
    assert 'graphpilot_requests_total{status="unavailable"} 1.0' in client.get("/metrics").text


def test_draining_is_reported(loading):
    runtime, client = loading
    runtime.draining = True
    assert client.get("/ready").json()["status"] == "draining"
    assert "shutting down" in client.post("/v1/completions", json={"prompt": "hi"}).json()["error"]["message"]


def test_body_limit(loading):
    _, client = loading
    r = client.post("/v1/completions", content=b'{"prompt": "' + b"x" * 2000 + b'"}')
    assert r.status_code == 413


def test_admin_before_the_engine_and_token(loading):
    runtime, _ = loading
    admin = TestClient(create_admin_app(runtime, token="t"))
    assert admin.get("/admin/profile").status_code == 401
    r = admin.get("/admin/profile", headers={"Authorization": "Bearer t"})
    assert r.status_code == 503


def test_text_delta_holds_back_partial_stop_strings_and_utf8():
    d = TextDelta(stop=("STOP",))
    assert d.update("hello S", finished=False) == "hell"  # 'o S' could start 'STOP'
    assert d.update("hello ST", finished=False) == "o"
    assert d.update("hello ", finished=True) == " "  # the stop string cut it: nothing to take back
    u = TextDelta(stop=())
    assert u.update("ab\ufffd", finished=False) == "ab"
    assert u.update("abé", finished=False) == "é"


def test_default_chat_template_is_chatml(tmp_path):
    t = ChatTemplate.from_model_dir(str(tmp_path))
    assert t.template is not None
    text = t.render([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert "im_start" in DEFAULT_CHAT_TEMPLATE


def test_template_errors_are_client_errors():
    t = ChatTemplate("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(TemplateError, match="alternate"):
        t.render([])


def test_validation_message_names_the_field():
    msg, param = validation_message(
        [{"loc": ("body", "top_p"), "msg": "Input should be less than or equal to 1"}]
    )
    assert (msg, param) == ("top_p: Input should be less than or equal to 1", "top_p")
