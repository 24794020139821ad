"""Fast constructors for the frozen dataclasses made once per span.

A frozen dataclass's `__init__` sets each field through `object.__setattr__`, since its
own `__setattr__` refuses: about 0.3 us a field on the machines we measure, so 3-4 us for
a `SpanRecord` or a `Figures`, more than everything else the roll-up does with a span.
`fast_constructor(cls)` returns a function that builds the same instance several times
faster: it sets the fields on an instance of a twin class that has the same slots and an
ordinary `__setattr__`, then gives the instance its real class. Python allows assigning
`__class__` between classes whose instances have the same layout (the same slots, no
`__dict__`), and the result is an ordinary instance of `cls`: equal to, hashed and
printed like one made by `cls(...)`, and just as frozen afterwards.

The constructor takes the fields positionally or by keyword, in the order of
`dataclasses.fields(cls)`, with the same defaults; `tests/test_frozen.py` checks that
every class built this way gives the same objects as its own `__init__`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING: Any = object()


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    """A function equal to `cls(...)` for the frozen slots dataclass `cls`, several times
    faster (see the module's docstring).

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True, slots=True)
    ... class Point:
    ...     x: int
    ...     y: int = 0
    >>> new_point = fast_constructor(Point)
    >>> new_point(1), new_point(1, y=2) == Point(1, 2)
    (Point(x=1, y=0), True)
    """
    params = getattr(cls, "__dataclass_params__", None)
    slots = cls.__dict__.get("__slots__")
    if params is None or not params.frozen or slots is None:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass with slots")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__, which this would skip")
    declared = getattr(cls, "__dataclass_fields__", {})
    if len(declared) != len(dataclasses.fields(cls)):  # type: ignore[arg-type]
        raise TypeError(f"{cls.__name__} has an InitVar or ClassVar field, which this skips")
    twin = type(f"_{cls.__name__}Twin", (), {"__slots__": tuple(slots)})
    try:  # the same layout, or Python refuses: a base with slots or a __dict__, a weakref
        probe = twin()
        probe.__class__ = cls
    except TypeError as error:
        raise TypeError(f"{cls.__name__}: its instances cannot be built on a twin") from error
    # The generated code's own names start with two underscores: no field can clash.
    namespace: dict[str, Any] = {"__twin": twin, "__cls": cls, "__missing": _MISSING}
    parameters: list[str] = []
    body: list[str] = ["    __self = __twin()"]
    for index, field in enumerate(dataclasses.fields(cls)):  # type: ignore[arg-type]
        name = field.name
        if not field.init or field.kw_only or name.startswith("__"):
            raise TypeError(f"{cls.__name__}.{name}: not a plain positional field of __init__")
        if field.default is not dataclasses.MISSING:
            namespace[f"__default_{index}"] = field.default
            parameters.append(f"{name}=__default_{index}")
        elif field.default_factory is not dataclasses.MISSING:
            namespace[f"__factory_{index}"] = field.default_factory
            parameters.append(f"{name}=__missing")
            body.append(f"    if {name} is __missing:\n        {name} = __factory_{index}()")
        else:
            parameters.append(name)
        body.append(f"    __self.{name} = {name}")
    body += ["    __self.__class__ = __cls", "    return __self"]
    source = f"def new_{cls.__name__}({', '.join(parameters)}):\n" + "\n".join(body)
    try:
        code = compile(source, f"<fast_constructor of {cls.__qualname__}>", "exec")
    except SyntaxError as error:  # e.g. a field without a default after one with
        raise TypeError(f"{cls.__name__}: no constructor could be generated ({error})") from error
    exec(code, namespace)
    function: Callable[..., T] = namespace[f"new_{cls.__name__}"]
    function.__doc__ = f"`{cls.__name__}(...)`, built faster (`core.frozen.fast_constructor`)."
    return function
