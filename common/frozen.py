"""Frozen dataclasses built in one step.

A frozen dataclass's generated __init__ sets each field through object.__setattr__, which on
the request path costs more than the work around it: an INFER_REPLY's twelve fields took 17,700
instructions, the largest part of answering a request in the compiled core, and every output
Tensor pays its four the same way. `one_step_init` gives a frozen dataclass an __init__ with the
same parameters (positional or keyword-only), defaults and fresh default factories that sets
the instance's __dict__ at once, as the codec's fast path builds the bodies it decodes.

It also gives the class `build`, a static function with the same parameters that makes an
instance without calling the class: a call to a class passes its keywords through a dict to
__init__ (type.__call__, then __init__ looked up and called with the dict), which made up a
third of an INFER_REPLY's cost in the compiled core; a plain function takes them as they come.
The core builds its EXECs and refusals with `build` (a message's fields are then not checked
by mypy: tests/test_codec.py builds every message type both ways); its OK replies and their
rows, one per request, it makes the same way in compiled code (controller/core.py's `made`).
The worker builds each RESULT with `build` (5,700 of its 316,000 instructions an EXEC saved,
`clockwork-bench overhead --count-instructions`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")
_NO_VALUE = object()  # a parameter whose field has a default factory was not given


def one_step_init(cls: type[T]) -> type[T]:
    """Replace the __init__ of the frozen dataclass `cls` (a class decorator, above @dataclass)."""
    params: list[str] = []  # positional, then "*", then keyword-only, as the dataclass orders them
    keyword: list[str] = []
    items = []
    namespace: dict[str, Any] = {"set_attribute": object.__setattr__, "new": object.__new__, "cls": cls,
                                 "NO_VALUE": _NO_VALUE}
    for fld in dataclasses.fields(cls):  # type: ignore[arg-type]
        name, where = fld.name, keyword if fld.kw_only else params
        if fld.default is not dataclasses.MISSING:
            namespace[f"default_{name}"] = fld.default
            where.append(f"{name}=default_{name}")
            items.append(f"{name!r}: {name}")
        elif fld.default_factory is not dataclasses.MISSING:
            namespace[f"factory_{name}"] = fld.default_factory
            where.append(f"{name}=NO_VALUE")
            items.append(f"{name!r}: factory_{name}() if {name} is NO_VALUE else {name}")
        else:
            where.append(name)
            items.append(f"{name!r}: {name}")
    if keyword:
        params += ["*", *keyword]
    fields = f"{{{', '.join(items)}}}"
    source = (f"def __init__(self, {', '.join(params)}):\n"
              f"    set_attribute(self, '__dict__', {fields})\n"
              f"def build({', '.join(params)}):\n"  # `self`, as in __init__: no field can take the name
              f"    self = new(cls)\n"
              f"    set_attribute(self, '__dict__', {fields})\n"
              f"    return self\n")
    exec(source, namespace)  # noqa: S102 (the source is made here, from the class's field names)
    for name in ("__init__", "build"):
        namespace[name].__qualname__ = f"{cls.__qualname__}.{name}"
    cls.__init__ = namespace["__init__"]  # type: ignore[misc]
    cls.build = staticmethod(namespace["build"])  # type: ignore[attr-defined]
    return cls
