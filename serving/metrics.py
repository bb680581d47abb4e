"""Prometheus metrics of the service, rendered as the text exposition format (no client library).

- ``recloop_stage_seconds`` histogram, label ``stage`` (route, retrieve, hydrate, rank, rerank,
  log, total);
- ``recloop_requests_total`` counter, labels ``arm`` and ``status`` (ok, degraded, rejected
  = 503, bad_request = 4xx);
- ``recloop_fallbacks_total`` counter, label ``kind`` (redis, retrieve, rank, cold_start, user_tower);
- ``recloop_reloads_total`` / ``recloop_rejected_reloads_total`` counters, label ``arm``;
- ``recloop_in_flight`` gauge; ``recloop_bundle_info`` gauge (1) labelled with arm and version;
- ``recloop_impressions_logged_total`` counter.
"""

from __future__ import annotations

import threading
from collections import defaultdict

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Cumulative-bucket histogram per label value (seconds)."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, label: str, seconds: float) -> None:
        counts = self.counts[label]
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.sums[label] += seconds


class Metrics:
    """The service's counters and histograms (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stage = Histogram()
        self.requests: dict[tuple[str, str], int] = defaultdict(int)
        self.fallbacks: dict[str, int] = defaultdict(int)
        self.impressions = 0
        self.in_flight = 0

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        with self._lock:
            for stage, ms in timings_ms.items():
                self.stage.observe(stage, ms / 1e3)

    def count_request(self, arm: str, status: str) -> None:
        with self._lock:
            self.requests[(arm, status)] += 1

    def count_fallback(self, kind: str) -> None:
        with self._lock:
            self.fallbacks[kind] += 1

    def count_impressions(self, n: int) -> None:
        with self._lock:
            self.impressions += n

    def render(
        self,
        reloads: dict[str, int],
        rejected: dict[str, int],
        bundles: dict[str, str | None],
    ) -> str:
        """The exposition text (``text/plain; version=0.0.4``)."""
        out: list[str] = []
        with self._lock:
            out += [
                "# HELP recloop_stage_seconds Latency of each serving stage.",
                "# TYPE recloop_stage_seconds histogram",
            ]
            for stage in sorted(self.stage.counts):
                counts, total = self.stage.counts[stage], 0
                for b, c in zip((*BUCKETS, float("inf")), counts, strict=True):
                    total += c
                    le = "+Inf" if b == float("inf") else repr(b)
                    out.append(f'recloop_stage_seconds_bucket{{stage="{stage}",le="{le}"}} {total}')
                out.append(f'recloop_stage_seconds_sum{{stage="{stage}"}} {self.stage.sums[stage]}')
                out.append(f'recloop_stage_seconds_count{{stage="{stage}"}} {total}')
            out += [
                "# HELP recloop_requests_total Recommendation requests by arm and outcome.",
                "# TYPE recloop_requests_total counter",
            ]
            for (arm, status), n in sorted(self.requests.items()):
                out.append(f'recloop_requests_total{{arm="{arm}",status="{status}"}} {n}')
            out += [
                "# HELP recloop_fallbacks_total Requests answered by a fallback path.",
                "# TYPE recloop_fallbacks_total counter",
            ]
            for kind, n in sorted(self.fallbacks.items()):
                out.append(f'recloop_fallbacks_total{{kind="{kind}"}} {n}')
            out += [
                "# HELP recloop_impressions_logged_total Impression rows handed to the log.",
                "# TYPE recloop_impressions_logged_total counter",
                f"recloop_impressions_logged_total {self.impressions}",
                "# HELP recloop_in_flight Requests being processed.",
                "# TYPE recloop_in_flight gauge",
                f"recloop_in_flight {self.in_flight}",
            ]
        out += [
            "# HELP recloop_reloads_total Bundles swapped in, by arm.",
            "# TYPE recloop_reloads_total counter",
            *(f'recloop_reloads_total{{arm="{a}"}} {n}' for a, n in sorted(reloads.items())),
            "# HELP recloop_rejected_reloads_total Bundles that failed to load or score, by arm.",
            "# TYPE recloop_rejected_reloads_total counter",
            *(
                f'recloop_rejected_reloads_total{{arm="{a}"}} {n}'
                for a, n in sorted(rejected.items())
            ),
            "# HELP recloop_bundle_info The bundle version each arm serves.",
            "# TYPE recloop_bundle_info gauge",
            *(
                f'recloop_bundle_info{{arm="{a}",version="{v}"}} 1'
                for a, v in sorted(bundles.items())
                if v is not None
            ),
        ]
        return "\n".join(out) + "\n"
