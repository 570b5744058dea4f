"""Sphinx configuration for the catga_sync documentation."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Let autodoc import catga_sync from the source tree even when it is not installed.
sys.path.insert(0, str(ROOT))


def _read_version() -> str:
    text = (ROOT / "catga_sync" / "_version.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("__version__ not found in catga_sync/_version.py")
    return match.group(1)


project = "catga_sync"
author = "the catga_sync developers"
copyright = "2026, the catga_sync developers"
release = _read_version()
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# No intersphinx: the build must not need the network.
nitpicky = False
exclude_patterns = ["_build"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"catga_sync {release}"
