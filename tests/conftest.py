"""Shared fixtures: tiny checkpoints, engine factory; `gpu` tests skip where CUDA is absent."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels compile only for a GPU; without one, its interpreter runs them on the CPU
    # (tests/unit/test_kernels.py). Set before any kernel is defined. The runtime never launches
    # them on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from helpers import TINY_ARCHS, write_hf_checkpoint


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The `tiny` preset checkpoint (Qwen3 shape, our BPE tokenizer, random weights)."""
    from graphpilot.runtime.models.presets import init_model

    return init_model("tiny", str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One tiny checkpoint per architecture, written by transformers."""
    return {arch: write_hf_checkpoint(arch, str(tmp_path_factory.mktemp(arch))) for arch in TINY_ARCHS}


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
