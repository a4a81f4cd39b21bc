"""graphpilot-operator: run the operator (default), or fetch a model in a pod's init container."""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import kopf


def _run(args: argparse.Namespace) -> int:
    import graphpilot.operator.handlers  # noqa: F401  (registers the handlers)

    log_format = kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL
    # Quiet by default: warnings only; what the operator does is posted as Kubernetes events.
    kopf.configure(debug=args.debug, quiet=not (args.verbose or args.debug), log_format=log_format)
    if not args.debug:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API request otherwise
    kopf.run(
        standalone=args.peering is None,
        peering_name=args.peering,
        # Peers of equal priority all pause (kopf's rule), so each replica draws its own.
        priority=args.priority if args.priority is not None else random.randint(1, 1_000_000),
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(namespaces=list(args.namespace or ())),
    )
    return 0


def fetch_model(uri: str, dest: Path) -> None:
    """Download hf://ORG/NAME[@REV] or an https:// .tar.gz into dest; a dest that has config.json is kept."""
    if (dest / "config.json").exists():
        logging.info("model already present in %s", dest)
        return
    dest.mkdir(parents=True, exist_ok=True)
    if uri.startswith("hf://"):
        from huggingface_hub import snapshot_download

        repo, _, revision = uri.removeprefix("hf://").partition("@")
        snapshot_download(repo_id=repo, revision=revision or None, local_dir=str(dest))
    elif uri.startswith("https://"):
        with tempfile.NamedTemporaryFile(suffix=".tar.gz", dir=dest) as tmp:
            urllib.request.urlretrieve(uri, tmp.name)
            with tarfile.open(tmp.name) as tar:
                tar.extractall(dest, filter="data")
    else:
        raise SystemExit(f"unsupported model uri {uri!r}: use hf://ORG/NAME[@REVISION] or https://...tar.gz")
    if not (dest / "config.json").exists():
        raise SystemExit(f"{uri} has no config.json at its top level")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the graphpilot-operator console script."""
    p = argparse.ArgumentParser(prog="graphpilot-operator", description=__doc__)
    sub = p.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run the operator (the default)")
    run.add_argument(
        "-n", "--namespace", action="append", help="watch only this namespace (repeatable); default: all"
    )
    run.add_argument(
        "--peering", help="kopf peering name: several replicas elect one active operator; default standalone"
    )
    run.add_argument(
        "--priority", type=int, help="peering priority; the highest live peer is active (default: random)"
    )
    run.add_argument("--liveness", help="health endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--log-format", choices=["json", "plain"], default="json")
    run.add_argument(
        "-v", "--verbose", action="store_true", help="log every handler run (default: warnings only)"
    )
    run.add_argument("--debug", action="store_true")
    fetch = sub.add_parser("fetch-model", help="download a model (init container)")
    fetch.add_argument("--uri", required=True)
    fetch.add_argument("--dest", required=True, type=Path)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(
        argv if argv and argv[0] in ("run", "fetch-model", "-h", "--help") else ["run", *argv]
    )
    if args.command == "fetch-model":
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        fetch_model(args.uri, args.dest)
        return 0
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
