"""The sidecar's Prometheus metrics, on an explicit registry (no global state, tests stay isolated)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

ACTIONS = ("retune", "mem_fraction", "rollback", "restore")
RESULTS = ("applied", "rolled_back", "superseded", "rejected", "skipped", "kept", "dry_run", "error")


class TunerMetrics:
    """graphpilot_autotune_* (names shared with dashboards, alerts and docs)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self.decisions = Counter(
            "graphpilot_autotune_decisions",
            "Profile decisions by action (retune, mem_fraction, rollback, restore) and result.",
            ["action", "result"],
            registry=self.registry,
        )
        # every series exists at 0 from the start, so increase() counts each one's first decision
        for action in ACTIONS:
            for result in RESULTS:
                self.decisions.labels(action=action, result=result)
        self.padding_waste = Gauge(
            "graphpilot_autotune_padding_waste_ratio",
            "Share of replayed tokens that are padding, over the decayed window, under the current buckets.",
            registry=self.registry,
        )
        self.expected_gain = Gauge(
            "graphpilot_autotune_expected_gain_ratio",
            "Modelled fall of forward time if the proposed profile replaced the current one.",
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "graphpilot_autotune_rollbacks",
            "Profile changes undone: by the sidecar after a measured regression, or by the runtime after a failed capture.",
            registry=self.registry,
        )
        self.last_apply = Gauge(
            "graphpilot_autotune_last_apply_timestamp_seconds",
            "Unix time of the last profile the runtime applied at the sidecar's request.",
            registry=self.registry,
        )
