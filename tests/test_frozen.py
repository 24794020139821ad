"""`core.frozen.fast_constructor`: the same objects as the class's own `__init__`."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import KW_ONLY, InitVar, dataclass, field
from decimal import Decimal
from typing import Any, Generic, TypeVar

import pytest

from agenta_notebook.core.fields import Figures, counted_figures, sum_figures
from agenta_notebook.core.frozen import fast_constructor
from agenta_notebook.core.pricing import PricedCost
from agenta_notebook.core.rollup import SpanEvent, SpanRecord, new_record
from agenta_notebook.core.usage import Usage

T = TypeVar("T")

#: Every class the package builds with a fast constructor.
BUILT_FAST = (Figures, SpanRecord, Usage, PricedCost)


def _value(declared: dataclasses.Field[Any], rng: random.Random) -> Any:
    """A value of the field's type, or its default, at random."""
    if rng.random() < 0.3:
        return dataclasses.MISSING  # leave it to the default
    kind = str(declared.type)
    if "Decimal" in kind:
        return Decimal(rng.randrange(10**6)).scaleb(-rng.randrange(12))
    if "Mapping" in kind:
        return {"k": rng.randrange(5)}
    if "tuple" in kind:
        return (SpanEvent("exception", rng.randrange(99)),) if "SpanEvent" in kind else ("w",)
    if "bool" in kind:
        return rng.random() < 0.5
    if "int" in kind:
        return None if "None" in kind and rng.random() < 0.3 else rng.randrange(2**40)
    return rng.choice(["a", "gpt-4o", None] if "None" in kind else ["a", "b"])


def _hash_of(value: object) -> int | str:
    try:
        return hash(value)
    except TypeError as error:  # a field holds a dict: neither can be hashed
        return str(error)


@pytest.mark.parametrize("cls", BUILT_FAST, ids=lambda cls: cls.__name__)
def test_the_fast_constructor_builds_what_the_class_builds(cls: type) -> None:
    make = fast_constructor(cls)
    rng = random.Random(cls.__name__)
    declared = dataclasses.fields(cls)
    required = [f for f in declared if f.default is f.default_factory is dataclasses.MISSING]
    for _ in range(200):
        values = {f.name: _value(f, rng) for f in declared}
        for f in required:  # a required field always gets a value
            if values[f.name] is dataclasses.MISSING:
                values[f.name] = "x" if "str" in str(f.type) else 1
        # The first fields positionally (as many as are given in a row), the rest by name.
        cut = rng.randrange(len(declared) + 1)
        positional: list[Any] = []
        for f in declared[:cut]:
            if values[f.name] is dataclasses.MISSING:
                break
            positional.append(values.pop(f.name))
        given = {name: value for name, value in values.items() if value is not dataclasses.MISSING}
        expected = cls(*positional, **given)
        built = make(*positional, **given)
        assert type(built) is cls
        assert built == expected and repr(built) == repr(expected)
        assert _hash_of(built) == _hash_of(expected)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(built, declared[0].name, None)


def test_a_default_factory_gives_each_instance_its_own_value() -> None:
    first = new_record(1, 2, None, "a", 0)
    second = new_record(1, 3, None, "b", 0)
    assert first.attributes == {} and first.attributes is not second.attributes
    assert first == SpanRecord(1, 2, None, "a", 0)


def test_the_generated_sums_build_figures_of_the_class() -> None:
    total = sum_figures([Figures(input_tokens=3, cost=Decimal("0.1")), Figures(model_calls=1)])
    assert type(total) is Figures
    assert total == Figures(input_tokens=3, cost=Decimal("0.1"), model_calls=1)
    own = counted_figures(
        Usage(input_tokens=5), 1, cost=None, model_calls=1, unpriced_calls=1, errors=0
    )
    assert type(own) is Figures and own.input_tokens == 5 and own.model_calls == 1


def test_only_frozen_slots_dataclasses_without_post_init_are_accepted() -> None:
    @dataclass(slots=True)
    class Mutable:
        x: int

    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            raise AssertionError("skipped by a fast constructor")

    @dataclass(frozen=True, slots=True)
    class Base:
        x: int

    @dataclass(frozen=True, slots=True)
    class Derived(Base):
        y: int = field(default=0)

    @dataclass(frozen=True, slots=True, weakref_slot=True)
    class WithWeakref:
        x: int

    class PlainBase:  # no __slots__: its subclasses' instances have a __dict__
        pass

    @dataclass(frozen=True, slots=True)
    class FromPlain(PlainBase):
        x: int

    @dataclass(frozen=True, slots=True)
    class GenericOne(Generic[T]):
        x: int

    @dataclass(frozen=True, slots=True)
    class KeywordOnly:
        a: int
        _: KW_ONLY
        b: int

    @dataclass(frozen=True, slots=True)
    class KeywordAfterDefault:
        a: int = 0
        b: int = field(kw_only=True)

    @dataclass(frozen=True, slots=True)
    class WithInitVar:
        a: int
        scale: InitVar[int] = 1

    refused = (Mutable, NoSlots, Checked, Derived, WithWeakref, FromPlain, GenericOne)
    for cls in (*refused, KeywordOnly, KeywordAfterDefault, WithInitVar):
        with pytest.raises(TypeError):
            fast_constructor(cls)


def test_fields_named_like_the_generated_code_are_built_right() -> None:
    @dataclass(frozen=True, slots=True)
    class Selfish:
        self: int
        _cls: int = 0
        _twin: int = 1
        _MISSING: int = 2

    assert fast_constructor(Selfish)(5, 6, 7, 8) == Selfish(5, 6, 7, 8)
