"""An on-disk cache of judge answers, keyed by a hash of the full request.

A resumed or repeated round asks the same questions; with the answers kept under the hash of the
request (model, messages with their images, response format) it pays for none of them twice. Each
answer is one small JSON file, written to a temporary name and renamed, so a killed process never
leaves a half-written answer that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from strokes.io import write_atomic


def request_key(body: dict) -> str:
    """SHA-256 of the request body in canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AnswerCache:
    """`folder/<key[:2]>/<key>.json` per answer."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The stored answer, or None (a missing or unreadable file, or one that holds no answer
        object, is a miss, never an error: the step is asked again)."""
        try:
            answer = json.loads(self._path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return answer if isinstance(answer, dict) else None

    def put(self, key: str, answer: dict) -> None:
        write_atomic(self._path(key), json.dumps(answer))  # a per-thread temporary: concurrent writers are safe

    def count(self) -> int:
        """How many answers are stored."""
        return sum(1 for _ in self.folder.glob("*/*.json"))
