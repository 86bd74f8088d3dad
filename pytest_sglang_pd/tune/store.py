"""The search's results as they come, in one JSON file an interrupted search resumes from."""

from __future__ import annotations

import json
import threading
from pathlib import Path


RESULTS_FILE = "tune.json"


class Store:
    """The search's results as they come, in one JSON file: an interrupted search resumes from it. Candidates measured
    at once (Slurm) write through ``put``, ``put_point`` and ``put_profile``, one at a time."""

    def __init__(self, path: Path, key: dict):
        self.path = path
        self._lock = threading.RLock()
        data = json.loads(path.read_text()) if path.exists() else {}
        self.data = data if data.get("key") == key else {"key": key}
        self.data.setdefault("profiles", {})
        self.data.setdefault("candidates", {})

    def save(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
            tmp.replace(self.path)

    def put(self, candidate: str, record: dict) -> None:
        """A candidate's record (re)placed, and saved."""
        with self._lock:
            self.candidates[candidate] = record
            self.save()

    def put_point(self, candidate: str, concurrency: str, point: dict) -> None:
        """One measured point of a candidate, saved."""
        with self._lock:
            self.candidates[candidate] = {**self.candidates[candidate],
                                          "points": {**self.candidates[candidate]["points"], concurrency: point}}
            self.save()

    def put_profile(self, key: str, profile: dict) -> None:
        """A profile's result (``layouts.profile_key``), saved."""
        with self._lock:
            self.profiles[key] = profile
            self.save()

    @property
    def profiles(self) -> dict[str, dict]:
        return self.data["profiles"]

    @property
    def candidates(self) -> dict[str, dict]:
        return self.data["candidates"]
