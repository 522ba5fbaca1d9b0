"""Check the system libraries WeasyPrint needs (Pango and a font) before ``make run`` / ``make test``.

Runs with the system python and the standard library only: ``python3 local/check_system.py``.
Silent when everything is there; otherwise says what to install and exits 1.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys

PANGO_LIBRARIES = ("pango-1.0", "pangoft2-1.0")
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", os.path.expanduser("~/.fonts"))
FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".pfb", ".woff", ".woff2")
INSTALL_HINT = "sudo apt-get install libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core"
TEST_TOOLS = {"pdftotext": "poppler-utils"}  # the document tests read rendered PDFs back as text


def missing_libraries() -> list[str]:
    """The Pango libraries the dynamic loader cannot find."""
    return [name for name in PANGO_LIBRARIES if ctypes.util.find_library(name) is None]


def has_font() -> bool:
    """Whether fontconfig lists a font, or a font file exists in the usual folders."""
    fc_list = shutil.which("fc-list")
    if fc_list:
        try:
            listed = subprocess.run([fc_list], capture_output=True, text=True, timeout=20, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            listed = ""
        if listed.strip():
            return True
    for folder in FONT_DIRS:
        for _root, _dirs, files in os.walk(folder):
            if any(name.lower().endswith(FONT_SUFFIXES) for name in files):
                return True
    return False


def main(arguments: list[str]) -> int:
    """Print what is missing and return 1, or return 0 silently. ``--tests``: also what the tests need."""
    problems = [f"library {name} (Pango) not found" for name in missing_libraries()]
    if not has_font():
        problems.append("no font installed")
    hint = INSTALL_HINT
    if "--tests" in arguments:
        for tool, package in TEST_TOOLS.items():
            if shutil.which(tool) is None:
                problems.append(f"{tool} not found (the document tests need it)")
                hint += f" {package}"
    if not problems:
        return 0
    print("PDF rendering (WeasyPrint) and its tests need system packages that are missing:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    print(f"Install them (Debian/Ubuntu) with:\n  {hint}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
