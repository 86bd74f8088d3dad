"""The simulated worker's Prometheus metrics: SGLang's ``sglang:`` names, rendered as text format."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# SGLang's default buckets (python/sglang/srt/metrics/collector.py)
TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 120.0, 160.0)
ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080,
               0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


class WorkerMetrics:
    """Counters and histograms of one worker; gauges are passed in at render time."""

    def __init__(self, role: str, model_name: str, engine: str) -> None:
        self.labels = {"model_name": model_name, "role": role}
        self.engine = engine
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.generation_tokens = 0
        self.kv_handoffs = 0
        self.kv_bytes = 0
        self.kv_failures = 0
        self.kv_seconds = 0.0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)

    def record_transfer(self, nbytes: int, seconds: float) -> None:
        self.kv_handoffs += 1
        self.kv_bytes += nbytes
        self.kv_seconds += seconds

    def render(self, gauges: dict[str, float]) -> str:
        base = _labels(self.labels)
        kv = _labels({**self.labels, "engine": self.engine})
        lines: list[str] = []

        def sample(name: str, kind: str, help_text: str, value: float, labels: str = base) -> None:
            lines.extend([f"# HELP sglang:{name} {help_text}", f"# TYPE sglang:{name} {kind}",
                          f"sglang:{name}{labels} {value}"])

        for name, value in gauges.items():
            sample(name, "gauge", name.replace("_", " "), value)
        sample("prompt_tokens_total", "counter", "Number of prefill tokens processed.", self.prompt_tokens)
        sample("cached_tokens_total", "counter", "Number of cached prompt tokens.", self.cached_tokens)
        sample("generation_tokens_total", "counter", "Number of generation tokens processed.", self.generation_tokens)
        sample("kv_transfer_handoffs_total", "counter",
               "KV payloads written (prefill) or received and checksum-verified (decode).", self.kv_handoffs, kv)
        sample("kv_transfer_bytes_total", "counter", "Bytes moved by the KV transfer engine.", self.kv_bytes, kv)
        sample("kv_transfer_failures_total", "counter", "Failed KV transfers.", self.kv_failures, kv)
        sample("kv_transfer_seconds_total", "counter", "Seconds spent in KV transfer writes.", self.kv_seconds, kv)
        for name, help_text, histogram in (
            ("time_to_first_token_seconds", "Histogram of time to first token in seconds.", self.ttft),
            ("inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", self.itl),
        ):
            lines += [f"# HELP sglang:{name} {help_text}", f"# TYPE sglang:{name} histogram"]
            cumulative = 0
            for bound, count in zip(histogram.buckets, histogram.counts, strict=True):
                cumulative += count
                lines.append(f"sglang:{name}_bucket{_labels({**self.labels, 'le': str(bound)})} {cumulative}")
            lines.append(f"sglang:{name}_bucket{_labels({**self.labels, 'le': '+Inf'})} {histogram.count}")
            lines.append(f"sglang:{name}_sum{base} {histogram.total}")
            lines.append(f"sglang:{name}_count{base} {histogram.count}")
        return "\n".join(lines) + "\n"
