"""What the suite asks of running workers over HTTP: their version, an emptied prefix cache, the KV transfers they
counted, a plain 200; and how a /generate answer is read (the whole body within a deadline, its finish reason)."""

from __future__ import annotations

import json
import time

import requests

from . import prom, sse


def worker_versions(worker_urls: dict[str, list[str]]) -> dict[str, str]:
    """role -> the version its first worker reports on /server_info (/get_server_info on older sglang)."""
    out = {}
    for role, urls in worker_urls.items():
        for path in ("/server_info", "/get_server_info") if urls else ():
            try:
                resp = requests.get(f"{urls[0]}{path}", timeout=3)
                if resp.ok and resp.json().get("version"):
                    out[role] = str(resp.json()["version"])
                    break
            except (requests.RequestException, ValueError):
                continue
    return out


def flush_caches(worker_urls: dict[str, list[str]]) -> list[str]:
    """Each worker's prefix cache emptied (SGLang's POST /flush_cache, which refuses while requests run); what
    failed, one line per worker."""
    problems = []
    for role, urls in worker_urls.items():
        for url in urls:
            try:
                resp = requests.post(f"{url}/flush_cache", timeout=10)
                if not resp.ok:
                    problems.append(f"{role} {url}/flush_cache: HTTP {resp.status_code} {resp.text.strip()[:200]}")
            except requests.RequestException as exc:
                problems.append(f"{role} {url}/flush_cache: {type(exc).__name__}: {exc}")
    return problems


def handoffs(worker_urls: dict[str, list[str]]) -> float | None:
    """KV transfers the prefill workers counted so far (sglang:kv_transfer_latency_ms_count); None where they export
    no PD metrics (started without --enable-metrics)."""
    metrics = prom.worker_metrics(worker_urls)
    return prom.role_sum(metrics, "prefill", "kv_transfers") or (0.0 if prom.exports_pd(metrics) else None)


def get_ok(url: str) -> bool:
    """True when a GET of ``url`` answers 200 within 2 s."""
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def body_within(response: requests.Response, deadline: float) -> str:
    """The whole body of a (streamed) response, or ``requests.Timeout`` once ``deadline`` (monotonic) has passed:
    the read timeout bounds each read, this bounds a stream that keeps trickling."""
    chunks = []
    with response:
        for chunk in response.iter_content(chunk_size=None):
            chunks.append(chunk)
            if time.monotonic() > deadline:
                raise requests.Timeout("the response was still streaming at the deadline")
    return b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")


def finish_reason(text: str, stream: bool) -> dict:
    """The finish reason of a /generate answer (a stream's last event); ``abort`` for an error, ``unparsable`` for
    what is not JSON."""
    try:
        if stream:
            chunks = sse.payloads(text.encode())
            last = json.loads(chunks[-1]) if chunks else {}
        else:
            last = json.loads(text)
    except ValueError:
        return {"type": "unparsable"}
    if "error" in last:
        return {"type": "abort", "message": str(last["error"])}
    return (last.get("meta_info") or {}).get("finish_reason") or {}
