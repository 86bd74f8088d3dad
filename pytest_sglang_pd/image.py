"""Which sources a docker-sim image was built from: a digest of this package, kept as an image label."""

from __future__ import annotations

import hashlib
from pathlib import Path

SOURCE_LABEL = "pytest-sglang-pd.source"
PACKAGE = Path(__file__).resolve().parent
_BUILT_FROM = ("*.py", "*.json", "textgen/tokenizer/*")


def source_digest() -> str:
    """sha256 (16 hex digits) over the package's code and data files, by relative path and content."""
    h = hashlib.sha256()
    files = sorted({p for pattern in _BUILT_FROM for p in PACKAGE.rglob(pattern)
                    if p.is_file() and "__pycache__" not in p.parts and "cluster_configs" not in p.parts})
    for path in files:
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


if __name__ == "__main__":
    print(source_digest())
