"""graphpilot-operator's command line, its model fetcher, and the no-torch rule of the operator image path."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from graphpilot.operator.cli import fetch_model


def test_operator_starts_without_torch() -> None:
    code = (
        "import sys, graphpilot.operator.handlers, graphpilot.operator.cli; sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_help_lists_both_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "graphpilot.operator.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "run" in out.stdout and "fetch-model" in out.stdout


def test_fetch_model_keeps_a_model_that_is_already_there(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    fetch_model("https://example.invalid/never-fetched.tar.gz", tmp_path)  # no network touched
    assert (tmp_path / "config.json").read_text() == "{}"


def test_fetch_model_refuses_unsupported_schemes(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unsupported model uri"):
        fetch_model("ftp://host/model", tmp_path / "m")


def test_fetch_model_unpacks_an_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b'{"model_type": "qwen3"}'
        info = tarfile.TarInfo("config.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    # Serve the archive through urllib's file handler instead of the network.
    import urllib.request

    real = urllib.request.urlretrieve
    monkeypatch.setattr(urllib.request, "urlretrieve", lambda url, dest: real(archive.as_uri(), dest))
    fetch_model("https://models.example/qwen.tar.gz", tmp_path / "dest")
    assert (tmp_path / "dest" / "config.json").read_text() == '{"model_type": "qwen3"}'
