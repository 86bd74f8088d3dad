"""The search's results as they come, in one JSON file an interrupted search resumes from."""

from __future__ import annotations

import json
from pathlib import Path


RESULTS_FILE = "tune.json"


class Store:
    """The search's results as they come, in one JSON file: an interrupted search resumes from it."""

    def __init__(self, path: Path, key: dict):
        self.path = path
        data = json.loads(path.read_text()) if path.exists() else {}
        self.data = data if data.get("key") == key else {"key": key}
        self.data.setdefault("profiles", {})
        self.data.setdefault("candidates", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.path)

    @property
    def profiles(self) -> dict[str, dict]:
        return self.data["profiles"]

    @property
    def candidates(self) -> dict[str, dict]:
        return self.data["candidates"]
