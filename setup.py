"""The scheduling core compiled with mypyc, where the build machine can (docs/architecture.md,
"The compiled core"). setup.cfg holds everything else about the package.

The core is plain, typed Python and stays the reference: compiling changes how fast it runs, not
what it decides (tests/test_compiled_core.py plays one seeded simulation both ways and compares
every decision). With CLOCKWORK_PURE_PYTHON=1 at build time nothing is compiled (and what an
earlier editable build compiled is removed); at run time, the Python source is imported even
where compiled modules are installed (controller/__init__.py).

mypyc names modules after their folders, and the folders here install under the `clockwork`
package (setup.cfg's package_dir), so the sources are staged under build/mypyc-src/clockwork
first. A type error in the core fails the build, as a compile error would. Without a C compiler
the extensions are skipped (they are optional) and the Python source serves.
"""

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
# The scheduling core (controller/core.py's Core, its policies and their pure helpers): every
# request, result and tick goes through these. Not the daemon (sockets, threads) nor the
# registry (SQLite), whose time is not the core's.
CORE = ["admission", "baseline", "batching", "core", "effects", "heap_entry", "latency", "lifecycle",
        "listing", "placement", "policy", "queues", "request", "state", "timeline"]
STAGE = ROOT / "build" / "mypyc-src"
MANIFEST = ROOT / "controller" / "_compiled.json"  # the sources' hashes; read by controller/__init__.py


def compiled_core() -> list:
    if {"egg_info", "dist_info", "sdist"} & set(sys.argv):  # metadata only
        return []
    if os.environ.get("CLOCKWORK_PURE_PYTHON"):
        MANIFEST.unlink(missing_ok=True)
        for leftover in (ROOT / "controller").glob("*.so"):
            leftover.unlink()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:  # a build without pyproject.toml's build requirements: pure Python
        return []
    shutil.rmtree(STAGE, ignore_errors=True)
    for folder in ("common", "controller"):  # the core imports clockwork.common too
        shutil.copytree(ROOT / folder, STAGE / "clockwork" / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    os.environ["MYPYPATH"] = str(STAGE)
    extensions = mypycify(["--explicit-package-bases", "--ignore-missing-imports", "--follow-imports=silent",
                           *(str(STAGE / "clockwork" / "controller" / f"{m}.py") for m in CORE)],
                          opt_level="3", group_name="clockwork.controller._core")
    for ext in extensions:
        ext.optional = True
    MANIFEST.write_text(json.dumps({m: hashlib.sha256((ROOT / "controller" / f"{m}.py").read_bytes()).hexdigest()
                                    for m in CORE}, indent=1) + "\n")
    return extensions


setup(ext_modules=compiled_core())
