"""Live stages: a line at the start, a heartbeat with what it waits on while the body blocks, a line at the end."""

from __future__ import annotations

import time

import pytest

from pytest_sglang_pd import stages


def test_a_blocking_stage_tells_its_start_its_waits_and_its_end() -> None:
    told: list[tuple[float, str]] = []
    t0 = time.monotonic()
    with stages.stage(lambda line, level: told.append((time.monotonic() - t0, line)), "decode healthy",
                      lambda: "decode 3/8 healthy", every_s=0.05):
        time.sleep(0.3)  # a body that blocks, as a parallel precheck does
    lines = [line for _, line in told]
    assert lines[0] == "decode healthy ..." and lines[-1].startswith("decode healthy: done, 0.3")
    beats = lines[1:-1]
    assert len(beats) >= 3 and all(b.startswith("decode healthy: decode 3/8 healthy, 0.") for b in beats)
    gaps = [b - a for (a, _), (b, _) in zip(told, told[1:])]
    assert max(gaps) < 0.2  # never silent much longer than the cadence


def test_a_failing_stage_says_so_and_raises() -> None:
    told: list[str] = []
    with pytest.raises(RuntimeError):
        with stages.stage(lambda line, level: told.append(line), "router /readiness"):
            raise RuntimeError("boom")
    assert told[-1].startswith("router /readiness: failed after ")


@pytest.mark.parametrize(("seconds", "text"), [(3.21, "3.2 s"), (41.7, "41 s"), (190, "3 m 10 s"), (3720, "1 h 02 m")])
def test_elapsed_reads_like_a_clock(seconds: float, text: str) -> None:
    assert stages.elapsed(seconds) == text


def test_sglang_pd_up_prints_each_roles_url_start_up_time_and_the_down_command(tmp_path) -> None:
    from pytest_sglang_pd.cli import up_summary

    text = up_summary("llama-8b", "http://127.0.0.1:8000", {"prefill": ["http://127.0.0.2:30001"],
                                                             "decode": ["http://127.0.0.3:30002", "http://127.0.0.4:30002"]},
                      {"router": 1.62, "prefill": 2.0, "decode": 2.41, "prefill_launch": 0.01}, tmp_path / "run")
    lines = text.splitlines()
    assert lines[0] == "cluster of llama-8b is up"
    assert lines[1].split() == ["router", "http://127.0.0.1:8000", "ready", "after", "1.6", "s"]
    assert lines[3].split() == ["decode", "http://127.0.0.3:30002", "ready", "after", "2.4", "s"]
    assert lines[4].split() == ["decode", "http://127.0.0.4:30002"]
    assert lines[-1] == f"  stop it: sglang-pd down {tmp_path / 'run'}" and "{" not in text  # no raw JSON
