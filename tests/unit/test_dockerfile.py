"""The image: its entrypoints are real console scripts, what it copies exists, versions are pinned."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_every_container_entrypoint_is_a_console_script_with_a_module() -> None:
    named = set(re.findall(r"graphpilot-[a-z]+", DOCKERFILE))
    assert named == {"graphpilot-runtime", "graphpilot-sidecar", "graphpilot-operator"}
    assert named <= set(SCRIPTS)
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]
    for script in named:
        module, func = SCRIPTS[script].split(":")
        package, _, leaf = module.rpartition(".")
        source = ROOT / package_dir[package] / f"{leaf}.py"
        assert source.is_file(), f"{script} -> {module} but {source.relative_to(ROOT)} does not exist"
        assert re.search(rf"^def {func}\(", source.read_text(), re.M), f"{source.name} has no {func}()"


def test_copied_paths_exist_and_survive_dockerignore() -> None:
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    ignore = [p for p in ignore if p and not p.startswith("#")]

    def ignored(path: str) -> bool:
        verdict = False  # the last matching pattern wins, as in Docker
        for pattern in ignore:
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")):
                verdict = not negate
        return verdict

    copies = [args.split()[:-1] for op, args in instructions() if op == "COPY" and "--from" not in args]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such path"
            assert not ignored(src), f"COPY {src}: excluded by .dockerignore"


def test_every_package_the_project_needs_is_in_the_image() -> None:
    wanted = {re.split(r"[<>=\[ ]", d)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    pinned = dict(re.findall(r'"([A-Za-z0-9_.-]+)==([0-9][^"]*)"', DOCKERFILE))
    provided = {name.lower() for name in pinned} | {"torch"}  # torch comes with the base image
    assert wanted <= provided, f"not installed in the image: {sorted(wanted - provided)}"


def test_base_image_and_versions_are_pinned_and_it_runs_as_non_root() -> None:
    (base,) = [args for op, args in instructions() if op == "FROM"]
    assert ":" in base and not base.endswith(":latest")
    installs = [args for op, args in instructions() if op == "RUN" and "pip install" in args]
    for args in installs:
        for requirement in re.findall(r'"([^"]+)"', args):
            assert "==" in requirement, f"unpinned: {requirement}"
    user = [args for op, args in instructions() if op == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0


def test_every_source_package_is_in_the_distribution() -> None:
    """The image installs a wheel: a package missing from pyproject's list would be missing there."""
    package_dir = PYPROJECT["tool"]["setuptools"]["package-dir"]
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = set()
    for name, src in package_dir.items():
        for init in (ROOT / src).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / src)
            on_disk.add(".".join([name, *rel.parts]))
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages"
