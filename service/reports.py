"""The comparison reports a server was pointed at (``cvpipe serve --reports reports/``).

Only what ``cvpipe compare`` and ``cvpipe summary`` write is listed and served: a report
folder (one plain name) under the reports folder holding ``report.html`` (or the summary's
``index.html``), and in it only files with the endings of :data:`SERVED`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cvpipe.errors import ConfigError
from cvpipe.storage import safe_name

#: File endings served from a report folder.
SERVED = (".html", ".png", ".md", ".json")
_PAGES = ("report.html", "index.html")


def _page(folder: Path) -> str | None:
    return next((p for p in _PAGES if (folder / p).is_file()), None)


def list_reports(root: str | None) -> list[dict[str, Any]]:
    """Every report under ``root``: name, title, dataset, creation time and URL, newest first."""
    if not root or not Path(root).is_dir():
        return []
    out = []
    for folder in sorted(Path(root).iterdir()):
        page = _page(folder) if folder.is_dir() and not folder.name.startswith(".") else None
        if page is None:
            continue
        info: dict[str, Any] = {"name": folder.name, "url": f"/reports/{folder.name}/{page}",
                                "title": folder.name, "dataset": None, "created": None}
        try:
            results = json.loads((folder / "results.json").read_text())
            ds, run = results.get("dataset") or {}, results.get("run") or {}
            profile = (run.get("profile") or {}).get("name")
            # texts only, as the API documents them: an edited file's other values are dropped
            info.update(title=f"{_text(ds.get('title')) or 'CIFAR-10'}, profile {_text(profile)}",
                        dataset=_text(ds.get("name")) or "cifar10", created=_text(run.get("created")))
        except (OSError, ValueError, AttributeError):
            if page == "index.html":
                info["title"] = "Summary across datasets"
        out.append(info)
    return sorted(out, key=lambda r: r["created"] or "", reverse=True)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def report_file(root: str | None, name: str, file: str) -> Path | None:
    """The path of a served report file, or None for anything else (no traversal, no other
    endings, nothing outside a listed report folder)."""
    if not root:
        return None
    try:
        safe_name(name, "report")
        safe_name(file, "file")
    except ConfigError:
        return None
    folder = Path(root) / name
    path = folder / file
    if not file.endswith(SERVED) or _page(folder) is None or not path.is_file():
        return None
    if not path.resolve().is_relative_to(Path(root).resolve()):  # a link out of the reports
        return None
    return path
