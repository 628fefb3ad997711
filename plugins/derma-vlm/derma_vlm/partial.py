"""Append-only partial results, so an interrupted prediction resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from derma_core.atomic import atomic_open


def settings_signature(signature: dict) -> str:
    """A short digest of the settings that produce a set of rows."""
    return hashlib.sha256(json.dumps(signature, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PartialResults:
    """Append-only JSONL of finished rows, keyed by a signature of the settings that produced them.

    Each line is flushed and fsynced after every batch; a truncated last line (a kill mid-write)
    is ignored on reading, and rows from different settings are never mixed in. One process
    writes one file (under torchrun each rank has its own, see :mod:`derma_vlm.distributed`).
    """

    def __init__(self, path: Path, signature: dict) -> None:
        self.path = Path(path)
        self.signature = settings_signature(signature)
        self.rows: dict[str, dict] = {}

    def read(self, path: Path | None = None) -> dict[str, dict]:
        """The rows of ``path`` (default: this file) written under the same signature."""
        path = Path(path) if path is not None else self.path
        rows: dict[str, dict] = {}
        if not path.exists():
            return rows
        with path.open(encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        if not lines:
            return rows
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = {}
        if header.get("signature") != self.signature:
            return rows  # other settings: start over (the file is rewritten on start)
        for line in lines[1:]:
            try:
                row = json.loads(line)
                rows[str(row["id"])] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        return rows

    def load(self) -> dict[str, dict]:
        self.rows = self.read()
        return self.rows

    def start(self) -> None:
        """Rewrite the file with the header and the rows kept (drops any torn line)."""
        with atomic_open(self.path, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"signature": self.signature}) + "\n")
            for row in self.rows.values():
                fh.write(json.dumps(row) + "\n")

    def append(self, rows: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
                self.rows[str(row["id"])] = row
            fh.flush()
            os.fsync(fh.fileno())
