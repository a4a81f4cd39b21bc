"""Render the key panels of the GraphPilot Grafana dashboard to PNG from a Prometheus, with matplotlib.

    # from any Prometheus that scrapes GraphPilot pods (last 15 minutes)
    python bench/render_dashboard.py --prometheus http://127.0.0.1:9090 --namespace ml --inferenceservice chat

    # or run everything here: runtime (tiny preset, eager graph backend), autotuner sidecar and Prometheus
    # on loopback, a phased load, then render (what docs/img/ holds)
    python bench/render_dashboard.py --local --out docs/img

The queries are the dashboard's own (charts/graphpilot/dashboards/graphpilot.json) with the template
variables filled in, evaluated with query_range. Prints a JSON summary: panels, series and samples.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "charts" / "graphpilot" / "dashboards" / "graphpilot.json"
RULES = ROOT / "charts" / "graphpilot" / "rules" / "graphpilot-rules.yaml"
# (file name, panel title): the panels docs/observability.md shows
PANELS = [
    ("replays-by-bucket", "Replays/s by bucket"),
    ("eager-fallback", "Eager fallback by reason"),
    ("num-tokens-heatmap", "num_tokens per forward"),
    ("bucket-set", "Bucket set size and max bucket"),
    ("padding-waste", "Padding waste"),
    ("recaptures", "Recaptures by result"),
    ("autotuner-decisions", "Decisions by action and result"),
    ("latency-e2e", "End-to-end request latency"),
    ("ttft", "Time to first token"),
    ("throughput", "Token throughput"),
    ("requests", "Requests running and waiting"),
    ("kv-cache", "KV cache usage and mem_fraction_static"),
]
FAILING_BUCKET = 200
BAR_SECONDS = 5


class Prom:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": start, "end": end, "step": step}
        body = httpx.get(self.url + "/api/v1/query_range", params=params, timeout=60).json()
        if body["status"] != "success":
            raise RuntimeError(f"{expr}: {body.get('error')}")
        return body["data"]["result"]  # type: ignore[no-any-return]


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    return expr


def legend(fmt: str, metric: dict[str, str]) -> str:
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out or ",".join(f"{k}={v}" for k, v in metric.items()) or "value"


def draw_style(panel: dict[str, Any], name: str) -> str:
    style = panel["fieldConfig"]["defaults"].get("custom", {}).get("drawStyle", "line")
    for o in panel["fieldConfig"].get("overrides", []):
        if o["matcher"]["id"] == "byRegexp" and re.fullmatch(o["matcher"]["options"], name):
            style = next((p["value"] for p in o["properties"] if p["id"] == "custom.drawStyle"), style)
    return str(style)


def unit_of(panel: dict[str, Any], name: str) -> str:
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    for o in panel["fieldConfig"].get("overrides", []):
        matcher = o["matcher"]["options"]
        if (o["matcher"]["id"] == "byName" and matcher == name) or (
            o["matcher"]["id"] == "byRegexp" and re.fullmatch(matcher, name)
        ):
            unit = next((p["value"] for p in o["properties"] if p["id"] == "unit"), unit)
            if any(p["id"] == "custom.axisPlacement" for p in o["properties"]):
                return unit + "@right"
    return unit


def fetch(
    prom: Prom, panel: dict[str, Any], variables: dict[str, str], start: float, end: float, step: float
):
    series = []
    for t in panel["targets"]:
        for r in prom.query_range(substitute(t["expr"], variables), start, end, step):
            xs = [float(v[0]) for v in r["values"]]
            ys = [float(v[1]) for v in r["values"]]
            series.append((legend(t.get("legendFormat", ""), r["metric"]), r["metric"], xs, ys))
    return series


def plot_timeseries(ax: Any, panel: dict[str, Any], series: list[Any], t0: float, step: float) -> None:
    import matplotlib.pyplot as plt

    stacked: dict[float, float] = {}
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    defaults = panel["fieldConfig"]["defaults"]
    right = None
    units = {}
    for i, (name, _, xs, ys) in enumerate(sorted(series, key=lambda s: _sort_key(s[0]))):
        unit, target, style = unit_of(panel, name), ax, "-"
        if unit.endswith("@right"):  # a second axis, drawn dashed so it is not read on the left scale
            right = right or ax.twinx()
            target, unit, style = right, unit[: -len("@right")], "--"
        units[target] = unit
        color = colors[i % len(colors)]
        if draw_style(panel, name) == "bars":  # stacked, one bar per step, as Grafana draws it
            bottom = [stacked.get(x, 0.0) for x in xs]
            target.bar([x - t0 for x in xs], ys, width=step * 0.9, bottom=bottom, label=name, color=color)
            stacked.update({x: b + y for x, b, y in zip(xs, bottom, ys, strict=True)})
        else:
            target.plot([x - t0 for x in xs], ys, style, label=name, linewidth=1.5, color=color)
    for target, unit in units.items():
        names = {"percentunit": "ratio", "ops": "per second", "reqps": "requests/s", "s": "seconds"}
        target.set_ylabel(names.get(unit, "" if unit == "short" else unit))
        if target is ax and "min" in defaults:
            target.set_ylim(bottom=defaults["min"])
        elif target is not ax:
            target.set_ylim(bottom=0)
    handles, labels = [], []
    for a in (ax, right):
        if a is not None:
            h, lb = a.get_legend_handles_labels()
            handles += h
            labels += lb
    if right is not None:  # scaled to its data (Grafana's fixed max would flatten a small share)
        peak = max((y for line in right.get_lines() for y in line.get_ydata() if y == y), default=0.0)
        right.set_ylim(0, peak * 1.15 if peak > 0 else 1.0)
    if len(handles) > 6:  # many buckets: a column legend beside the plot
        ax.legend(handles, labels, fontsize=7, ncol=(len(labels) + 11) // 12, loc="upper left",
                  bbox_to_anchor=(1.08 if right else 1.01, 1.0), frameon=False, title="bucket" if
                  all(lb.isdigit() for lb in labels) else None)  # fmt: skip
    elif handles:
        ax.legend(handles, labels, fontsize=8, ncol=min(5, len(labels)), loc="upper center",
                  bbox_to_anchor=(0.5, -0.25), frameon=False)  # fmt: skip


def _sort_key(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits and name.isdigit() else 1 << 30, name)


def plot_heatmap(ax: Any, series: list[Any], t0: float, max_bucket: list[Any]) -> None:
    import numpy as np
    from matplotlib.colors import PowerNorm

    rows = sorted(((float(m["le"]) if m["le"] != "+Inf" else float("inf"), ys) for _, m, _, ys in series))
    edges = [le for le, _ in rows if le != float("inf")]
    counts = np.array([ys for _, ys in rows])
    counts = np.diff(np.vstack([np.zeros(counts.shape[1]), counts]), axis=0)  # cumulative le -> per bucket
    counts = counts[: len(edges)]
    keep = np.where(counts.sum(axis=1) > 0)[0]
    lo, hi = (keep.min(), keep.max() + 1) if len(keep) else (0, len(edges))
    xs = np.array(series[0][2]) - t0
    step = xs[1] - xs[0] if len(xs) > 1 else 1.0
    lower = [0.5, *edges[:-1]]
    mesh = ax.pcolormesh(np.append(xs, xs[-1] + step), np.array([lower[lo], *edges[lo:hi]]), counts[lo:hi],
                         cmap="Oranges", shading="flat", norm=PowerNorm(0.5))  # fmt: skip
    ax.figure.colorbar(mesh, ax=ax, pad=0.01, label="forwards per interval")
    ax.set_yscale("log", base=2)
    ax.set_ylabel("num_tokens (histogram bucket)")
    for name, _, mx, my in max_bucket:
        ax.step(
            np.array(mx) - t0, my, where="post", color="tab:blue", linewidth=1.6, label=f"max bucket ({name})"
        )
    if max_bucket:
        ax.legend(fontsize=8, loc="upper left")


def render(
    prom: Prom, variables: dict[str, str], start: float, end: float, step: float, out: Path
) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for slug, title in PANELS:
        panel = panels[title]
        series = fetch(prom, panel, variables, start, end, step)
        fig, ax = plt.subplots(figsize=(8, 3.4), dpi=110)
        if panel["type"] == "heatmap":
            bucket_panel = panels["Bucket set size and max bucket"]
            mb = [s for s in fetch(prom, bucket_panel, variables, start, end, step) if s[0].startswith("max")]
            plot_heatmap(ax, series, start, [(s[1].get("pod", ""), s[1], s[2], s[3]) for s in mb])
        elif draw_style(panel, "") == "bars":
            # bars count events per bar: the rate interval is the bar width, not a sliding window
            bar_vars = {**variables, "$__rate_interval": f"{BAR_SECONDS}s"}
            series = fetch(prom, panel, bar_vars, start, end, BAR_SECONDS)
            plot_timeseries(ax, panel, series, start, BAR_SECONDS)
        else:
            plot_timeseries(ax, panel, series, start, step)
        ax.set_title(title, fontsize=11, loc="left")
        ax.set_xlabel("seconds since start", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{slug}.png")
        plt.close(fig)
        summary[slug] = {"series": len(series), "samples": sum(len(s[2]) for s in series)}
    return summary


# --- --local: the whole stack on loopback -------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def console_script(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [shutil.which(name) or name]


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer 200 within {timeout:.0f} s")


@contextlib.contextmanager
def local_stack(work: Path) -> Iterator[dict[str, Any]]:
    """Runtime + sidecar + Prometheus (1 s scrapes, the chart's rules), all on loopback."""
    import yaml

    port, admin, sidecar_port, prom_port = free_port(), free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAPHPILOT_") or k == "GRAPHPILOT_CACHE"}
    procs: list[subprocess.Popen[bytes]] = []
    log = open(work / "stack.log", "wb")  # noqa: SIM115

    def start(cmd: list[str]) -> subprocess.Popen[bytes]:
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
        return procs[-1]

    labels = {"namespace": "ml", "inferenceservice": "chat", "pod": "chat-0"}
    jobs = [{"job_name": f"graphpilot-{c}", "static_configs": [{"targets": [f"127.0.0.1:{p}"],
             "labels": {**labels, "container": c}}]} for c, p in (("runtime", port), ("autotuner", sidecar_port))]  # fmt: skip
    config = {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(RULES)], "scrape_configs": jobs}  # fmt: skip
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    try:
        rt = start([*console_script("graphpilot-runtime"), "serve", "--preset", "tiny", "--graph-backend", "eager",
                    "--no-progress", "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin),
                    "--max-num-batched-tokens", "256", "--graph-buckets", "2,4,8",
                    "--debug-fail-capture-at", str(FAILING_BUCKET)])  # fmt: skip
        prom = start([str(shutil.which("prometheus")), f"--config.file={work / 'prometheus.yml'}",
                      f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                      "--log.level=warn"])  # fmt: skip
        wait_http(f"http://127.0.0.1:{port}/ready", rt)
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", prom)
        time.sleep(3)  # a few scrapes of the idle runtime first, so counters start from a sample
        sidecar = [*console_script("graphpilot-sidecar"), "--admin-url", f"http://127.0.0.1:{admin}", "--host",
                   "127.0.0.1", "--port", str(sidecar_port), "--interval-seconds", "2", "--cooldown-seconds", "10",
                   "--min-gain-ratio", "0.02", "--max-buckets", "8", "--state-file", str(work / "profile.json")]  # fmt: skip
        yield {"openai": f"http://127.0.0.1:{port}/v1", "admin": f"http://127.0.0.1:{admin}",
               "prometheus": f"http://127.0.0.1:{prom_port}", "start_sidecar": lambda: start(sidecar)}  # fmt: skip
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()


def phased_load(stack: dict[str, Any], seconds_per_phase: float) -> None:
    """Short prompts; then long ones beyond the max bucket (the autotuner starts and covers them);
    then a retune the runtime cannot capture, which it rolls back."""
    import openai

    client = openai.OpenAI(base_url=stack["openai"], api_key="unused", max_retries=0, timeout=120)

    def run(repeat: int, until: float) -> None:
        def worker(w: int) -> None:
            i = w
            while time.time() < until:
                words = "a bucket " * (1 + (i * 7) % repeat) if repeat > 1 else "a bucket"
                client.completions.create(model="tiny", prompt=words, max_tokens=12 + i % 8, temperature=0)
                i += 3

        with cf.ThreadPoolExecutor(3) as pool:
            list(pool.map(worker, range(3)))

    run(1, time.time() + seconds_per_phase)  # 3-token prompts fit the 2,4,8 buckets
    stack["start_sidecar"]()
    run(24, time.time() + seconds_per_phase)  # up to ~70 tokens: too_many_tokens until the autotuner retunes
    httpx.put(stack["admin"] + "/admin/profile", json={"buckets": [2, 4, 8, FAILING_BUCKET]}, timeout=120)
    run(24, time.time() + seconds_per_phase / 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prometheus", help="Prometheus base URL")
    p.add_argument("--local", action="store_true", help="start runtime, sidecar and Prometheus here first")
    p.add_argument("--phase-seconds", type=float, default=45.0, help="--local: length of one load phase")
    p.add_argument("--namespace", default="ml")
    p.add_argument("--inferenceservice", default="chat")
    p.add_argument("--pod", default=".*", help="regex of pods (Grafana's All is .*)")
    p.add_argument("--minutes", type=float, default=15.0, help="range to render, ending now")
    p.add_argument("--step", type=float, default=2.0, help="query_range step in seconds")
    p.add_argument("--rate-interval", default="10s", help="what $__rate_interval stands for")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = p.parse_args(argv)
    if not args.local and not args.prometheus:
        p.error("give --prometheus URL or --local")
    variables = {"$namespace": args.namespace, "$inferenceservice": args.inferenceservice, "$pod": args.pod,
                 "$__rate_interval": args.rate_interval, "$__interval": f"{args.step:g}s"}  # fmt: skip
    with contextlib.ExitStack() as stack:
        if args.local:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            local = stack.enter_context(local_stack(work))
            start = time.time()
            phased_load(local, args.phase_seconds)
            time.sleep(5)  # the last scrapes
            url, end = local["prometheus"], time.time()
        else:
            url, end = args.prometheus, time.time()
            start = end - args.minutes * 60
        variables["$__range"] = f"{int(end - start)}s"
        summary = render(Prom(url), variables, start, end, args.step, args.out)
    print(json.dumps({"start": start, "end": end, "out": str(args.out), "panels": summary}, indent=1))
    return 0 if all(s["series"] for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
