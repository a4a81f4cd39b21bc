"""`serve` settings: command line > environment > state file > config file > defaults."""

from __future__ import annotations

import json

import pytest

from graphpilot.runtime.cli import build_parser
from graphpilot.runtime.config import ConfigError
from graphpilot.runtime.server.cli import resolve_settings


def settings(argv: list[str], env: dict[str, str] | None = None):
    args = build_parser().parse_args(["serve", *argv])
    return resolve_settings(vars(args), env or {})


def test_defaults():
    s = settings(["--preset", "tiny"])
    assert (s.port, s.admin_host, s.admin_port) == (8000, "127.0.0.1", 8001)
    assert s.max_num_batched_tokens == 2048
    assert s.preset == "tiny" and s.model is None


def test_precedence_cli_over_env_over_file(tmp_path):
    cfg = tmp_path / "runtime.yaml"
    cfg.write_text("preset: tiny\nmax_num_batched_tokens: 512\nmax_running_requests: 7\nport: 9000\n"
                   "graph_buckets: [1, 8, 64]\nno_progress: true\n")  # fmt: skip
    env = {"GRAPHPILOT_MAX_RUNNING_REQUESTS": "9", "GRAPHPILOT_PORT": "9100"}
    s = settings(["--config", str(cfg), "--port", "9200"], env)
    assert s.port == 9200  # command line
    assert s.max_running_requests == 9  # environment over file
    assert s.max_num_batched_tokens == 512  # file over default
    assert s.graph_buckets == (1, 8, 64)
    assert s.no_progress is True


def test_config_path_from_environment_and_json(tmp_path):
    cfg = tmp_path / "runtime.json"
    cfg.write_text(json.dumps({"model": "/models/x", "graph-backend": "eager"}))
    s = settings([], {"GRAPHPILOT_CONFIG": str(cfg), "GRAPHPILOT_GRAPH_BUCKETS": "1,2,4"})
    assert s.model == "/models/x" and s.graph_backend == "eager"
    assert s.graph_buckets == (1, 2, 4)


def test_model_on_the_command_line_replaces_preset_from_file(tmp_path):
    cfg = tmp_path / "runtime.yaml"
    cfg.write_text("preset: tiny\n")
    s = settings(["--config", str(cfg), "--model", "/models/y"])
    assert (s.model, s.preset) == ("/models/y", None)


def test_state_file_between_file_and_environment(tmp_path):
    cfg, state = tmp_path / "runtime.yaml", tmp_path / "state.json"
    cfg.write_text(f"preset: tiny\nmem_fraction_static: 0.9\nstate_file: {state}\n")
    state.write_text(json.dumps({"graph_buckets": [2, 4], "mem_fraction_static": 0.7}))
    s = settings(["--config", str(cfg)])
    assert (s.mem_fraction_static, s.graph_buckets) == (0.7, (2, 4))
    assert (
        settings(["--config", str(cfg)], {"GRAPHPILOT_MEM_FRACTION_STATIC": "0.5"}).mem_fraction_static == 0.5
    )


@pytest.mark.parametrize(
    ("content", "env", "words"),
    [
        ("preset: tiny\nwarp_speed: 9\n", {}, "unknown setting 'warp_speed'"),
        ("preset: tiny\ngraph_backend: turbo\n", {}, "not one of"),
        ("preset: tiny\nport: eighty\n", {}, "invalid value"),
        ("- a\n- b\n", {}, "mapping"),
        ("preset: tiny\n", {"GRAPHPILOT_NO_PROGRESS": "maybe"}, "true or false"),
        ("preset: tiny\nadmin_host: 0.0.0.0\n", {}, "--admin-token"),
    ],
)
def test_invalid_settings_name_the_problem(tmp_path, content, env, words):
    cfg = tmp_path / "runtime.yaml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=words):
        settings(["--config", str(cfg)], env)


def test_exposed_admin_with_token_is_fine():
    s = settings(["--preset", "tiny", "--admin-host", "0.0.0.0"], {"GRAPHPILOT_ADMIN_TOKEN": "t"})
    assert s.admin_token == "t"


def test_on_off_flags_from_the_environment_and_the_command_line():
    s = settings(["--preset", "tiny"])
    assert s.enable_prefix_caching is True and s.async_scheduling is None
    env = {"GRAPHPILOT_ENABLE_PREFIX_CACHING": "false", "GRAPHPILOT_ASYNC_SCHEDULING": "false"}
    s = settings(["--preset", "tiny"], env)
    assert s.enable_prefix_caching is False and s.async_scheduling is False
    s = settings(["--preset", "tiny", "--enable-prefix-caching", "--async-scheduling"], env)
    assert s.enable_prefix_caching is True and s.async_scheduling is True
