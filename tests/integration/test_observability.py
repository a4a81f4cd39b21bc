"""The dashboard and the alerts against a real Prometheus scraping a real runtime and autotuner under load.

Prometheus (the Debian package) scrapes every second and loads the chart's rule file. Each dashboard
query, with its template variables filled in as Grafana would, must parse and return data; each rule
must evaluate without error, and the alerts this traffic provokes must show up in Prometheus.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from conftest import RuntimeProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "graphpilot"
RULES = CHART / "rules" / "graphpilot-rules.yaml"
DASHBOARD = CHART / "dashboards" / "graphpilot.json"
TARGET = {"namespace": "ml", "inferenceservice": "chat", "pod": "chat-0"}
# what Grafana puts in for its built-in variables over a short range
GRAFANA_VARS = {"$__rate_interval": "2m", "$__range": "5m", "$__interval": "15s"}
FAILING_BUCKET = 200  # the runtime is told to fail live captures of this bucket


class Prometheus:
    """A Prometheus server on a free loopback port with temporary storage."""

    def __init__(self, workdir: Path, targets: dict[str, int], rule_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs = [
            {
                "job_name": f"graphpilot-{container}",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{port}"], "labels": {**TARGET, "container": container}}
                ],
            }
            for container, port in targets.items()
        ]
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rule_file)],
            "scrape_configs": jobs,
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(shutil.which("prometheus")), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> Prometheus:
        until(lambda: self._ready(), timeout, "Prometheus did not become ready", self.logs)
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited with {self.proc.returncode}:\n{self.logs()}")
        try:
            return httpx.get(self.url + "/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def api(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = r.json()
        assert body["status"] == "success", f"{path} {params}: {body.get('error')}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.api("query", query=expr)["result"]  # type: ignore[no-any-return]

    def logs(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Sidecar:
    """`graphpilot-sidecar` tuning the runtime every second, keeping its profile in a state file."""

    def __init__(self, workdir: Path, runtime: RuntimeProcess, port: int) -> None:
        self.port = port
        script = Path(sys.executable).parent / "graphpilot-sidecar"
        cmd = [str(script)] if script.exists() else [sys.executable, "-m", "graphpilot.sidecar.cli"]
        self.log = open(workdir / "sidecar.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [*cmd, "--admin-url", runtime.admin_url, "--host", "127.0.0.1", "--port", str(self.port),
             "--interval-seconds", "1", "--cooldown-seconds", "2", "--min-gain-ratio", "0.01",
             "--max-buckets", "8", "--state-file", str(workdir / "profile.json")],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        self.log.close()


def until(check: Callable[[], Any], timeout: float, what: str, logs: Callable[[], str] = lambda: "") -> Any:
    """Poll `check` until it returns something truthy; fail with `what` (and logs) at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout:.0f} s\n{logs()}")


def drive_load(rt: RuntimeProcess, num_requests: int, max_tokens: int) -> int:
    """A short, bounded load (3 at a time): prompts up to ~50 tokens, every sixth one streamed."""
    client = openai.OpenAI(base_url=rt.openai_url, api_key="unused", max_retries=0, timeout=120)

    def one(i: int) -> int:
        prompt = "the graph replay of a bucket " * (2 + i % 7)
        if i % 6 == 0:
            messages = [{"role": "user", "content": prompt}]
            stream = client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=max_tokens, stream=True
            )  # type: ignore[arg-type]
            for _ in stream:
                pass
        else:
            client.completions.create(model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0)
        return 1

    with cf.ThreadPoolExecutor(3) as pool:
        return sum(pool.map(one, range(num_requests)))


@pytest.fixture(scope="module")
def stack(
    runtime_factory: Callable[..., RuntimeProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    if shutil.which("prometheus") is None:
        pytest.fail(
            "the prometheus server is not installed: `make system-deps` (Debian package `prometheus`)"
        )
    work = tmp_path_factory.mktemp("observability")
    rt = runtime_factory("--graph-buckets", "2,4,8", "--debug-fail-capture-at", str(FAILING_BUCKET))
    sidecar_port = free_port()
    prom = Prometheus(work, {"runtime": rt.port, "autotuner": sidecar_port}, RULES).wait_ready()
    sidecar = None
    try:
        # as in a cluster, Prometheus has scraped the idle runtime before traffic arrives
        until(lambda: prom.query("count_over_time(graphpilot_forward_num_tokens_count[1m]) >= 2"), 60,
              "Prometheus did not scrape the runtime", prom.logs)  # fmt: skip
        # before the autotuner starts, prompts beyond the 8-token max bucket run eagerly
        finished = drive_load(rt, 12, max_tokens=2)
        sidecar = Sidecar(work, rt, sidecar_port)
        finished += drive_load(rt, 15, max_tokens=6)
        until(
            lambda: prom.query('graphpilot_autotune_decisions_total{action="retune", result="applied"} > 0'),
            90, "the autotuner applied no retune", lambda: Path(sidecar.log.name).read_text()[-4000:],
        )  # fmt: skip
        # traffic on the tuned bucket set
        finished += drive_load(rt, 9, max_tokens=6)
        # a retune the runtime cannot capture (as a CUDA OOM would): it keeps serving on the old set
        answer = httpx.put(
            rt.admin_url + "/admin/profile", json={"buckets": [2, 4, 8, FAILING_BUCKET]}, timeout=120
        )
        assert answer.json()["result"] == "rolled_back", answer.text
        until(
            lambda: prom.query(f'sum(graphpilot_requests_total{{status=~"stop|length"}}) >= {finished}'),
            60, "Prometheus did not see every finished request", prom.logs,
        )  # fmt: skip
        until(lambda: prom.query('graphpilot_graph_recaptures_total{result="rolled_back"} > 0'), 30,
              "Prometheus did not see the rolled-back recapture")  # fmt: skip
        yield {"prom": prom, "runtime": rt, "sidecar": sidecar, "finished": finished}
    finally:
        if sidecar is not None:
            sidecar.stop()
        prom.stop()


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def substitute(expr: str) -> str:
    """Fill in template variables as Grafana does for namespace=ml, inferenceservice=chat, pod=All."""
    values = {
        "$namespace": TARGET["namespace"],
        "$inferenceservice": TARGET["inferenceservice"],
        "$pod": ".*",
    }
    for name, value in sorted({**GRAFANA_VARS, **values}.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def panel_targets() -> list[tuple[str, str, str]]:
    return [
        (p["title"], t.get("legendFormat", ""), t["expr"])
        for p in dashboard()["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


def test_every_dashboard_query_parses_and_returns_data(stack: dict[str, Any]) -> None:
    prom: Prometheus = stack["prom"]
    # "now" panels (rates over the last minutes) show live traffic, as someone watching would have
    drive_load(stack["runtime"], 6, max_tokens=4)
    until(lambda: prom.query("sum(rate(graphpilot_graph_replays_total[2m])) > 0"), 30,
          "Prometheus saw no recent replays", prom.logs)  # fmt: skip
    empty = []
    for title, legend, expr in panel_targets():
        if not prom.query(substitute(expr)):  # a parse error fails inside query() with Prometheus' message
            empty.append(f"{title} [{legend}]: {substitute(expr)}")
    assert empty == [], "panels without data:\n" + "\n".join(empty)


def test_template_variables_list_the_service_and_its_pod(stack: dict[str, Any]) -> None:
    prom: Prometheus = stack["prom"]
    seen = {}
    for var in dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert m, var["definition"]
        expr = m.group(1).replace("$namespace", TARGET["namespace"]).replace("$inferenceservice", "chat")
        seen[var["name"]] = {
            r["metric"].get(m.group(2)) for r in prom.query(f"group by ({m.group(2)}) ({expr})")
        }
    assert seen == {"namespace": {"ml"}, "inferenceservice": {"chat"}, "pod": {"chat-0"}}


def value(prom: Prometheus, expr: str) -> dict[str, float]:
    """{legend-ish key: value} of an instant query."""
    return {",".join(r["metric"].values()): float(r["value"][1]) for r in prom.query(substitute(expr))}


def target_of(title: str, legend: str = "") -> str:
    return next(e for t, lg, e in panel_targets() if t == title and lg.startswith(legend))


def test_panels_show_what_the_traffic_did(stack: dict[str, Any]) -> None:
    prom: Prometheus = stack["prom"]
    # prompts longer than the 8-token max bucket ran eagerly, and the panel says why
    rejects = value(prom, target_of("Eager fallback by reason", "{{reason}}"))
    assert rejects["too_many_tokens"] > 0, rejects
    # then the autotuner grew the bucket set to cover the traffic ...
    max_bucket = value(prom, target_of("Bucket set size and max bucket", "max bucket"))
    assert max(max_bucket.values()) > 8, max_bucket
    decisions = value(prom, target_of("Decisions by action and result"))
    assert decisions.get("retune,applied", 0) > 0, decisions
    # ... so replays happened in buckets the runtime did not start with
    replays = value(prom, target_of("Replays/s by bucket"))
    assert set(replays) - {"2", "4", "8"}, replays
    # the forced capture failure shows up as a rolled-back recapture
    recaptures = value(prom, target_of("Recaptures by result", "{{result}}"))
    assert recaptures["rolled_back"] > 0 and recaptures["applied"] > 0, recaptures
    # every request finished, and the latency panels have percentiles
    statuses = value(prom, target_of("Requests by status"))
    assert statuses["length"] > 0 and statuses["error"] == 0, statuses
    for title in ("Time to first token", "Inter-token latency", "End-to-end request latency"):
        (p50,) = value(prom, target_of(title, "p50")).values()
        (p99,) = value(prom, target_of(title, "p99")).values()
        assert 0 < p50 <= p99, (title, p50, p99)


def test_dashboard_uses_the_names_the_processes_export(stack: dict[str, Any]) -> None:
    prom: Prometheus = stack["prom"]
    exported = set(prom.api("label/__name__/values"))
    used = {m for _, _, e in panel_targets() for m in re.findall(r"graphpilot_[a-z0-9_]+", e)}
    rules = yaml.safe_load(RULES.read_text())["groups"]
    used |= {m for g in rules for r in g["rules"] for m in re.findall(r"graphpilot_[a-z0-9_]+", r["expr"])}
    assert used - exported == set()


def test_rules_load_and_evaluate_and_the_traffic_raises_alerts(stack: dict[str, Any]) -> None:
    prom: Prometheus = stack["prom"]
    names = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    loaded = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert {r["name"] for r in loaded} == names
    for r in loaded:
        assert prom.query(r["query"]) is not None  # parses through the query API as well
    until(lambda: all(r["health"] == "ok" for g in prom.api("rules")["groups"] for r in g["rules"]), 10,
          "a rule does not evaluate cleanly")  # fmt: skip

    def states() -> dict[str, str]:
        return {a["labels"]["alertname"]: a["state"] for a in prom.api("alerts")["alerts"]}

    # the failed capture fires at once; the eager share of this short run is pending its 15 minutes
    until(
        lambda: states().get("GraphPilotRecaptureFailed") == "firing",
        30,
        "GraphPilotRecaptureFailed did not fire",
    )
    eager = next(r["query"] for r in loaded if r["name"] == "GraphPilotEagerFallbackSustained")
    until(lambda: states().get("GraphPilotEagerFallbackSustained") == "pending", 30,
          "GraphPilotEagerFallbackSustained is not pending", lambda: json.dumps(prom.query(eager.split(">")[0])))  # fmt: skip
    (alert,) = [
        a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "GraphPilotRecaptureFailed"
    ]
    assert {k: alert["labels"][k] for k in TARGET} == TARGET
    assert "chat-0" in alert["annotations"]["summary"]
    assert "GraphPilotTargetDown" not in states()


def test_a_stopped_autotuner_makes_its_target_down_alert_pending(stack: dict[str, Any]) -> None:
    prom: Prometheus = stack["prom"]
    stack["sidecar"].stop()

    def down() -> list[dict[str, Any]]:
        return [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == "GraphPilotTargetDown"]

    (alert,) = until(down, 30, "GraphPilotTargetDown did not go pending")
    assert alert["state"] == "pending" and alert["labels"]["container"] == "autotuner"
