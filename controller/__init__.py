"""The controller. Its scheduling core may be installed compiled with mypyc (setup.py), which
records the hash of every source it compiled in `_compiled.json`. The modules here are imported
from their Python source instead when CLOCKWORK_PURE_PYTHON=1 is set (the reference the
compiled core is tested against), and when a source changed since it was compiled: a stale
compiled core would run code that is no longer there. The compiled modules share one native
library, so it is all of them or none."""

import hashlib
import importlib.abc
import importlib.util
import json
import os
import sys
import warnings

_HERE = os.path.dirname(__file__)
MANIFEST = "_compiled.json"


class _PythonSource(importlib.abc.MetaPathFinder):
    """Finds this package's modules as .py files, ahead of the compiled ones beside them."""

    def find_spec(self, name, path=None, target=None):
        package, _, module = name.rpartition(".")
        source = os.path.join(_HERE, module + ".py")
        if package != __name__ or not os.path.exists(source):
            return None
        return importlib.util.spec_from_file_location(name, source)


def stale_modules(folder: str = _HERE) -> list[str]:
    """The compiled modules whose source in `folder` changed since they were built (none if
    none were built)."""
    try:
        with open(os.path.join(folder, MANIFEST)) as fh:
            built = json.load(fh)
    except (OSError, ValueError):
        return []
    stale = []
    for module, digest in built.items():
        try:
            with open(os.path.join(folder, module + ".py"), "rb") as fh:
                current = hashlib.sha256(fh.read()).hexdigest()
        except OSError:
            current = None
        if current != digest:
            stale.append(module)
    return stale


if os.environ.get("CLOCKWORK_PURE_PYTHON"):
    sys.meta_path.insert(0, _PythonSource())
elif _stale := stale_modules():
    warnings.warn(f"clockwork.controller: {', '.join(_stale)} changed since the core was compiled; running "
                  "the Python source (`pip install -e .` or `make` compiles it again)", stacklevel=2)
    sys.meta_path.insert(0, _PythonSource())
