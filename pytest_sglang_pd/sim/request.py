"""One generation request inside the simulated worker: what was asked, how far it got, how it ended."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_sglang_pd.sim.output import OutputPlan


class Aborted(Exception):
    """A request ended with finish_reason abort; the message says which side and why."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GenInput:
    text: str
    ids: list[int]
    max_new_tokens: int
    stop: list[str]
    stop_token_ids: list[int]
    rid: str
    room: int | None = None
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None
    routed_dp_rank: int | None = None  # the DP rank the client asks for (``data_parallel_rank``, deprecated)


@dataclass
class Progress:
    tokens: int
    plan: OutputPlan
    prompt_tokens: int
    cached_tokens: int
    started: float
    finished: bool = False
    error: Aborted | None = None

    def finish_reason(self) -> dict | None:
        if self.error is not None:
            return {"type": "abort", "message": str(self.error), "status_code": self.error.status}
        return self.plan.finish_reason if self.finished else None


def as_list(value: object) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
