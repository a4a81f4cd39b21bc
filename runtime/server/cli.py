"""`graphpilot-runtime serve`: settings from flags, environment and a config file; two HTTP servers.

Precedence: command line > environment (GRAPHPILOT_<FLAG>, e.g. GRAPHPILOT_MAX_NUM_BATCHED_TOKENS) >
state file (the profile kept for the next start by PUT /admin/profile) > config file (--config,
YAML or JSON, snake_case keys named like the flags) > defaults.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from typing import Any

import yaml

from graphpilot.runtime.cli import _buckets, add_engine_args
from graphpilot.runtime.config import ConfigError

_DEFAULTS: dict[str, Any] = {}
_ACTIONS: dict[str, argparse.Action] = {}
_NOT_SETTINGS = {"help", "config"}


def add_serve_parser(subparsers: Any) -> None:
    """Add the `serve` subcommand to graphpilot-runtime."""
    p = subparsers.add_parser("serve", help="OpenAI-compatible server, /metrics, and the admin API")
    add_engine_args(p)
    p.add_argument("--config", help="YAML or JSON file of settings (keys: flag names in snake_case)")
    p.add_argument("--host", default="0.0.0.0", help="address of the public API")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--admin-host", default="127.0.0.1", help="address of the admin API (loopback by default)")
    p.add_argument("--admin-port", type=int, default=8001)
    p.add_argument(
        "--admin-token", help="bearer token of the admin API; required unless --admin-host is loopback"
    )
    p.add_argument(
        "--served-model-name", help="model name in the API (default: the preset or directory name)"
    )
    p.add_argument(
        "--state-file", help="JSON file where PUT /admin/profile keeps the profile for the next start"
    )
    p.add_argument("--max-request-bytes", type=int, default=4 << 20, help="larger bodies get 413")
    p.add_argument(
        "--drain-timeout", type=float, default=25.0, help="seconds SIGTERM waits for in-flight requests"
    )
    p.add_argument("--access-log", action="store_true", help="log every HTTP request")
    p.add_argument("--debug-fail-capture-at", type=_buckets, default=(),
                   help="testing only: live captures of these buckets fail (exercises rollback)")  # fmt: skip
    for action in p._actions:
        if action.dest in _NOT_SETTINGS or action.dest == argparse.SUPPRESS:
            continue
        _DEFAULTS[action.dest], _ACTIONS[action.dest] = action.default, action
        action.default = argparse.SUPPRESS  # so the namespace holds only what the command line gave
    p.set_defaults(func=cmd_serve)


def resolve_settings(cli: dict[str, Any], environ: dict[str, str] | None = None) -> argparse.Namespace:
    """Merge the command line with environment, state file, config file and defaults."""
    environ = dict(os.environ if environ is None else environ)
    config_path = cli.get("config") or environ.get("GRAPHPILOT_CONFIG")
    cli = {k: v for k, v in cli.items() if k in _ACTIONS}
    env = {k: _convert(k, environ[f"GRAPHPILOT_{k.upper()}"], "environment") for k in _ACTIONS
           if f"GRAPHPILOT_{k.upper()}" in environ}  # fmt: skip
    layers = [_DEFAULTS, _read_file(config_path) if config_path else {}]
    state_path = cli.get("state_file") or env.get("state_file") or layers[1].get("state_file")
    if state_path and os.path.isfile(state_path):
        layers.append(_read_file(state_path))
    merged: dict[str, Any] = {}
    for layer in [*layers, env, cli]:
        if layer.get("model") is not None or layer.get("preset") is not None:
            merged.pop("model", None)
            merged.pop("preset", None)
        merged.update(layer)
    merged.setdefault("model", None)
    merged.setdefault("preset", None)
    _check_admin(merged)
    return argparse.Namespace(**merged)


def _read_file(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the config file {path!r}: {e.strerror}") from e
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise ConfigError(f"the config file {path!r} is not valid: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the config file {path!r} must hold a mapping of settings")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _ACTIONS:
            raise ConfigError(
                f"unknown setting {key!r} in {path}; settings are the serve flags in snake_case"
            )
        out[name] = _convert(name, value, path)
    return out


def _convert(name: str, value: Any, source: str) -> Any:
    action = _ACTIONS[name]
    try:
        if isinstance(action, argparse._StoreTrueAction | argparse.BooleanOptionalAction):
            value = _bool(value)
        elif name in ("graph_buckets", "debug_fail_capture_at") and isinstance(value, list | tuple):
            value = tuple(int(x) for x in value)
        elif (
            callable(action.type)
            and not isinstance(value, bool)
            and (isinstance(value, str) or action.type in (int, float))
        ):
            value = action.type(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        raise ConfigError(f"{name} from {source}: invalid value {value!r} ({e})") from e
    if action.choices is not None and value not in action.choices:
        raise ConfigError(
            f"{name} from {source}: {value!r} is not one of {', '.join(map(str, action.choices))}"
        )
    return value


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _check_admin(s: dict[str, Any]) -> None:
    host = s.get("admin_host") or "127.0.0.1"
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not s.get("admin_token"):
        raise ConfigError(
            f"--admin-token (or GRAPHPILOT_ADMIN_TOKEN) is required when --admin-host {host} is not loopback"
        )


def cmd_serve(args: argparse.Namespace) -> int:
    from graphpilot.runtime.server.serve import serve

    return serve(resolve_settings(vars(args)))
