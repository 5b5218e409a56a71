"""What every benchmark ends with: its JSON written to ``path`` (folders made) and printed."""
from __future__ import annotations

import json
import os


def write_json(out: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))
