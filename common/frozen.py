"""Frozen dataclasses built in one step.

A frozen dataclass's generated __init__ sets each field through object.__setattr__, which on
the request path costs more than the work around it: an INFER_REPLY's twelve fields took 17,700
instructions, the largest part of answering a request in the compiled core, and every output
Tensor pays its four the same way. `one_step_init` gives a frozen dataclass an __init__ with the
same parameters (positional or keyword-only), defaults and fresh default factories that sets
the instance's __dict__ at once, as the codec's fast path builds the bodies it decodes.
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
    namespace: dict[str, Any] = {"set_attribute": object.__setattr__, "NO_VALUE": _NO_VALUE}
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
    source = (f"def __init__(self, {', '.join(params)}):\n"
              f"    set_attribute(self, '__dict__', {{{', '.join(items)}}})\n")
    exec(source, namespace)  # noqa: S102 (the source is made here, from the class's field names)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[misc]
    return cls
