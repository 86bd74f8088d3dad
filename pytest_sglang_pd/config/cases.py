"""The suite's cases of a config: model x inference test x concurrency, each with its test id."""

from __future__ import annotations

from dataclasses import dataclass

from .cluster import ClusterConfig
from .model import InferenceTest, ModelConfig


@dataclass(frozen=True)
class InferenceCase:
    """One test of the validation suite: a model, one of its inference tests, one concurrency."""

    model: ModelConfig
    test: InferenceTest
    concurrency: int

    @property
    def id(self) -> str:
        """``<model>-<test>``, with ``-c<N>`` per concurrency of a sweep (the pytest id, the results.json id)."""
        base = f"{self.model.id}-{self.test.name}"
        return f"{base}-c{self.concurrency}" if self.test.is_sweep else base


def cases(cfg: ClusterConfig) -> list[InferenceCase]:
    """Every case of a config: model by model, test by test, each concurrency of a sweep."""
    return [InferenceCase(m, t, c) for m in cfg.models for t in m.tests for c in t.max_concurrency]
