"""Building cluster configs for the self-tests: the shipped files, edited in memory."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "cluster_configs"
REFERENCE = REPO.parent / "shared" / "reference" / "sglang_disagg_pd_mi35x.json"


def raw(name: str) -> dict[str, Any]:
    """A shipped config (cluster_configs/NAME) as a fresh dict."""
    return copy.deepcopy(json.loads((CONFIGS / name).read_text()))


def write(tmp_path: Path, data: dict[str, Any], name: str = "cluster.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path
