"""The SGLang releases the suite plans for, and the command-line forms that change between them.

Two releases are known: 0.5.7 (the seed config's image) and 0.5.23. A release is planned with the forms of
the newest known release at or below it; one older than every known release gets the oldest forms.
"""

from __future__ import annotations

import re

KNOWN = ("0.5.7", "0.5.23")
DEFAULT = "0.5.23"  # planned when neither the config nor a probe says otherwise


def version_probe(package: str) -> tuple[str, ...]:
    """Arguments for a python that print the installed ``package``'s version (it exits 1 where it is absent)."""
    return ("-c", f"import importlib.metadata as m; print(m.version({package!r}))")


PROBE = version_probe("sglang")


def parse(version: str) -> tuple[int, ...]:
    """``"0.5.23.post1"`` -> ``(0, 5, 23)``; ValueError for what is no release number."""
    m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", version.strip())
    if not m:
        raise ValueError(f"{version!r} is not an SGLang release number (e.g. 0.5.23)")
    return tuple(int(x or 0) for x in m.groups())


def at_least(version: str, other: str) -> bool:
    return parse(version) >= parse(other)


def same_release(a: str, b: str) -> bool:
    """Same major.minor.patch (a post or rc suffix does not change the command forms)."""
    return parse(a) == parse(b)


def bench_serving_module(version: str) -> str:
    """0.5.23 moved bench_serving to ``sglang.benchmark.serving`` (the old path is a shim there)."""
    return "sglang.benchmark.serving" if at_least(version, "0.5.23") else "sglang.bench_serving"


def gsm8k_host(version: str, host: str) -> str:
    """few_shot_gsm8k's ``--host``: 0.5.23 adds ``http://`` itself; 0.5.7 concatenates host and port and
    needs the scheme."""
    return host if at_least(version, "0.5.23") else f"http://{host}"


FAKE_BOOTSTRAP_HOST = "2.2.2.2"  # sglang.srt.disaggregation.utils: a request no prefill serves and no KV follows


def fake_prefill_args(version: str) -> list[str]:
    """bench_serving's decode-alone mode: 0.5.23's ``--fake-prefill``; before it, the same request fields (the
    fake bootstrap host, room 0) through ``--extra-request-body``."""
    if at_least(version, "0.5.23"):
        return ["--fake-prefill"]
    return ["--extra-request-body", f'{{"bootstrap_host": "{FAKE_BOOTSTRAP_HOST}", "bootstrap_room": 0}}']


def dp_attention_args(version: str, dp_size: int) -> list[str]:
    """DP attention over ``dp_size`` ranks: 0.5.23's ``--attn-dp-size N``, 0.5.7's
    ``--dp-size N --enable-dp-attention``."""
    if at_least(version, "0.5.23"):
        return ["--attn-dp-size", str(dp_size)]
    return ["--dp-size", str(dp_size), "--enable-dp-attention"]


# --load-balance-method's choices (0.5.7: srt/server_args.py; 0.5.23: srt/arg_groups/fields/parallel.py, where auto
# resolves to follow_bootstrap_room on a PD prefill and round_robin on a decode: srt/arg_groups/serving_hook.py)
LOAD_BALANCE_METHODS = {
    "0.5.7": ("round_robin", "decode_round_robin", "shortest_queue", "minimum_tokens"),
    "0.5.23": ("auto", "round_robin", "follow_bootstrap_room", "total_requests", "total_tokens"),
}

# --kv-cache-dtype's choices (0.5.23: srt/arg_groups/fields/model.py; "auto" is the model's dtype)
KV_CACHE_DTYPES = ("auto", "fp8_e5m2", "fp8_e4m3", "mxfp8", "bf16", "bfloat16", "nvfp4", "fp4_mx_block16")


def forms_of(version: str) -> str:
    """The known release whose command-line forms ``version`` is planned with: the newest at or below it, else the
    oldest."""
    below = [k for k in KNOWN if at_least(version, k)]
    return max(below, key=parse) if below else min(KNOWN, key=parse)


def load_balance_methods(version: str) -> tuple[str, ...]:
    return LOAD_BALANCE_METHODS[forms_of(version)]
