"""What every benchmark ends with: its JSON written to ``path`` (folders made) and printed."""
from __future__ import annotations

import json
import os


def write_json(out: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


def merge_entry(path, key: str, entry: dict) -> None:
    """A trial's result: ``entry`` under ``key`` in the JSON object at ``path``, the other keys (earlier trials) kept."""
    from pathlib import Path

    path = Path(path)
    done = json.loads(path.read_text()) if path.exists() else {}
    done[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(done, indent=1) + "\n")
