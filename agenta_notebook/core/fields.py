"""The figures, each declared once: the `Figures` class below is the table.

Every figure a node carries (input tokens, ..., cost, model calls, unpriced calls,
errors) is one field of `Figures`, and that field's declaration says everything the rest
of the package needs about it: its type, its kind (a token count, money, or a count), its
labels, the span attributes that state it, the keys added for other backends on export,
its DataFrame columns and whether the tree rows show it. `FIGURES` is read from those
declarations, and the rest is derived from `FIGURES`:

- the sum of figures (`sum_figures`, `Figures.__add__`) and a span's counted own figures
  (`counted_figures`), generated from the table as straight-line code, since the roll-up
  runs them once per node;
- the mask of figures a span states (`stated_mask`) and the `REPORTS_*` bits;
- in `usage`: which attribute keys are read for which figure, and which are written;
  in `rollup`: the claim check; in `vocabulary`: the keys added on export; in
  `io/frame`: the DataFrame columns; in `views/html`: the details rows, the token
  breakdown and the columns of the tree rows.

To add a figure, add a field here (and to `Usage` when spans state it): the views, the
frame, the sums and the checks follow; `tests/test_fields.py` checks that they do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import MAX_EMAX, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal
from types import MappingProxyType
from typing import Any, Final, Literal

from agenta_notebook.core.frozen import fast_constructor

#: What a figure is: how it is summed, shown and stored.
#: "tokens": a token count, `None` when unknown; "money": dollars as an exact `Decimal`,
#: `None` when unknown; "count": how many spans are something, 0 when none.
Kind = Literal["tokens", "money", "count"]

#: The Python type each kind is declared with (checked when the table is read).
_ANNOTATIONS: Final[Mapping[Kind, str]] = MappingProxyType(
    {"tokens": "int | None", "money": "Decimal | None", "count": "int"}
)

#: Money is summed in this context: wide enough that a sum of costs (each at most 1e40
#: dollars with a resolution of at most 1e-30, see `rollup._exact_cost`) is never
#: rounded, so the root equals the sum of its parts exactly and the order of addition is
#: moot (rollup.md rules 11 and 12). The default context rounds to 28 digits. Every
#: operation on money uses it explicitly (`COST_CONTEXT.add(...)`, `context=`, or
#: `decimal.localcontext(COST_CONTEXT)`), never the caller's context, which a notebook may
#: have set to 3 digits or to trap `Inexact`. No traps: an impossible operation gives NaN,
#: checked where it can happen. 100 digits hold any int64 count (19 digits) times any
#: accepted price (at most 1e6 with 30 decimal places, 37 digits), summed over any trace.
COST_CONTEXT: Final = Context(
    prec=100, rounding=ROUND_HALF_EVEN, Emin=MIN_EMIN, Emax=MAX_EMAX, traps=[], flags=[]
)


@dataclass(frozen=True, slots=True)
class Figure:
    """One row of the table: everything about one figure, read from its declaration."""

    #: the field of `Figures` (and of `Usage`, for a figure spans state)
    name: str
    kind: Kind
    #: in sentences and the details pane: "input tokens"
    label: str
    #: in a token breakdown and narrow places: "input"
    short: str
    #: the span attributes that state it, in order of preference; the first is the one
    #: this package writes. Empty: spans never state it, only the roll-up counts it.
    keys: tuple[str, ...] = ()
    #: the keys added for other backends when a span leaves the notebook, in the GenAI
    #: conventions and in OpenInference (None: that vocabulary has no key for it)
    export: tuple[str | None, str | None] = (None, None)
    #: when a span does not state it, it is the sum of these (rollup.md rule 5)
    sum_of: tuple[str, ...] = ()
    #: the figure it is a part of (cache tokens are part of the input, rule 5): shown
    #: only where some span has it
    part_of: str | None = None
    #: the DataFrame column of a span's own figure (None: none); a count is a flag there
    own_column: str | None = None
    #: the title of its column in the tree rows (None: not a column there)
    column: str | None = None
    #: its `REPORTS_*` bit (0 for a figure spans never state)
    bit: int = 0

    @property
    def default(self) -> int | None:
        """The value of an absent figure: `None` (unknown), or 0 for a count."""
        return 0 if self.kind == "count" else None

    @property
    def subtotal_column(self) -> str:
        """The DataFrame column of the subtotal."""
        return f"subtotal_{self.name}"


def _declare(kind: Kind, label: str, short: str, **more: Any) -> Mapping[str, Any]:
    """The metadata of one field of `Figures`: its row of the table (the name is the
    field's, the default the kind's)."""
    return MappingProxyType({"figure": {"kind": kind, "label": label, "short": short, **more}})


def tokens(label: str, short: str, **more: Any) -> Mapping[str, Any]:
    """A token count, `None` when unknown; the span's own column is named like the field."""
    return _declare("tokens", label, short, own_column="{name}", **more)


def money(label: str, short: str, **more: Any) -> Mapping[str, Any]:
    """Dollars, `None` when unknown; the span's own column is named like the field."""
    return _declare("money", label, short, own_column="{name}", **more)


def count(label: str, short: str, **more: Any) -> Mapping[str, Any]:
    """How many spans are something, 0 when none."""
    return _declare("count", label, short, **more)


@dataclass(frozen=True, slots=True)
class Figures:
    """The figures rolled up at each node. `None` is absent (unknown), never zero.

    `cost` is the known part; `unpriced_calls` says how many counted spans have no
    price, so a cost next to a non-zero `unpriced_calls` is a lower bound.
    """

    input_tokens: int | None = field(
        default=None,
        metadata=tokens(
            "input tokens",
            "input",
            keys=(
                "ag.metrics.unit.tokens.prompt",
                "gen_ai.usage.input_tokens",
                "gen_ai.usage.prompt_tokens",
                "llm.token_count.prompt",
            ),
            export=("gen_ai.usage.input_tokens", "llm.token_count.prompt"),
        ),
    )
    output_tokens: int | None = field(
        default=None,
        metadata=tokens(
            "output tokens",
            "output",
            keys=(
                "ag.metrics.unit.tokens.completion",
                "gen_ai.usage.output_tokens",
                "gen_ai.usage.completion_tokens",
                "llm.token_count.completion",
            ),
            export=("gen_ai.usage.output_tokens", "llm.token_count.completion"),
        ),
    )
    total_tokens: int | None = field(
        default=None,
        metadata=tokens(
            "total tokens",
            "total",
            keys=(
                "ag.metrics.unit.tokens.total",
                "gen_ai.usage.total_tokens",
                "llm.token_count.total",
                "llm.usage.total_tokens",
            ),
            export=(None, "llm.token_count.total"),  # the GenAI conventions have no total
            sum_of=("input_tokens", "output_tokens"),
            column="tokens",
        ),
    )
    cache_read_tokens: int | None = field(
        default=None,
        metadata=tokens(
            "cache-read tokens",
            "cache read",
            keys=(
                "ag.metrics.unit.tokens.cache_read",  # what Agenta's SDK writes
                "ag.metrics.unit.tokens.cached",  # what agenta-notebook 0.1.0 wrote
                "gen_ai.usage.cache_read.input_tokens",
                "gen_ai.usage.cache_read_input_tokens",
                "gen_ai.usage.input_tokens.cached",
                "llm.token_count.prompt_details.cache_read",
            ),
            export=(
                "gen_ai.usage.cache_read.input_tokens",
                "llm.token_count.prompt_details.cache_read",
            ),
            part_of="input_tokens",
        ),
    )
    cache_write_tokens: int | None = field(
        default=None,
        metadata=tokens(
            "cache-write tokens",
            "cache write",
            keys=(
                # Agenta has no cache-write key: the GenAI one is written, others read it too
                "gen_ai.usage.cache_creation.input_tokens",
                "gen_ai.usage.cache_write.input_tokens",  # the Anthropic SDK's own spans
                "gen_ai.usage.cache_creation_input_tokens",
                "gen_ai.usage.input_tokens.cache_write",
                "llm.token_count.prompt_details.cache_write",
            ),
            export=(
                "gen_ai.usage.cache_creation.input_tokens",
                "llm.token_count.prompt_details.cache_write",
            ),
            part_of="input_tokens",
        ),
    )
    reasoning_tokens: int | None = field(
        default=None,
        metadata=tokens(
            "reasoning tokens",
            "reasoning",
            keys=(
                "ag.metrics.unit.tokens.reasoning",
                "gen_ai.usage.reasoning.output_tokens",
                "gen_ai.usage.reasoning_tokens",  # OpenLLMetry
                "llm.token_count.completion_details.reasoning",
            ),
            export=(
                "gen_ai.usage.reasoning.output_tokens",
                "llm.token_count.completion_details.reasoning",
            ),
            part_of="output_tokens",
        ),
    )
    cost: Decimal | None = field(
        default=None,
        metadata=money(
            "cost",
            "cost",
            # the second: Agenta's agent runtime
            keys=("ag.metrics.unit.costs.total", "gen_ai.usage.cost", "llm.cost.total"),
            # exported only where the span stated it (a price we computed is not the span's)
            export=(None, "llm.cost.total"),
            column="cost",
        ),
    )
    model_calls: int = field(
        default=0, metadata=count("model calls", "calls", own_column="model_call")
    )
    unpriced_calls: int = field(
        default=0, metadata=count("unpriced calls", "unpriced", own_column="unpriced")
    )
    # No own column: a span's own error is the frame's `error` column, next to its status.
    errors: int = field(default=0, metadata=count("errors", "errors"))

    def __add__(self, other: Figures) -> Figures:
        return sum_figures((self, other))


def figure_table(figures_class: type) -> tuple[Figure, ...]:
    """The table declared by the fields of `figures_class` (a dataclass declared with
    `tokens`, `money` and `count`), in declaration order, with their `REPORTS_*` bits:
    one per figure that spans state, in order."""
    table: list[Figure] = []
    bit = 1
    for declared in dataclasses.fields(figures_class):
        spec = dict(declared.metadata["figure"])
        kind: Kind = spec["kind"]
        annotation = _ANNOTATIONS[kind]
        default = 0 if kind == "count" else None
        if declared.type != annotation or declared.default != default:
            raise TypeError(f"{declared.name}: declare a {kind} figure as {annotation} = {default}")
        own_column = spec.pop("own_column", None)
        stated = bool(spec.get("keys"))
        table.append(
            Figure(
                name=declared.name,
                own_column=None if own_column is None else own_column.format(name=declared.name),
                bit=bit if stated else 0,
                **spec,
            )
        )
        if stated:
            bit <<= 1
    names = {figure.name for figure in table}
    for figure in table:
        if not set(figure.sum_of) <= names or figure.part_of not in names | {None}:
            raise TypeError(f"{figure.name} refers to a figure that is not declared")
    return tuple(table)


#: Every figure, in the order of `Figures`.
FIGURES: Final = figure_table(Figures)
#: name -> figure
FIGURE: Final[Mapping[str, Figure]] = MappingProxyType({figure.name: figure for figure in FIGURES})
#: The figures of `Figures`, by name, in order (rollup.md rule 1 holds for each).
FIGURE_FIELDS: Final = tuple(figure.name for figure in FIGURES)
#: The figures a span can state itself (the fields of `Usage` among them), in order.
STATED: Final = tuple(figure for figure in FIGURES if figure.bit)
#: The token counts spans state.
TOKEN_FIGURES: Final = tuple(figure for figure in STATED if figure.kind == "tokens")


def bits(table: Iterable[Figure]) -> int:
    """The `REPORTS_*` bits of these figures, as one mask."""
    mask = 0
    for figure in table:
        mask |= figure.bit
    return mask


def implied_bits(figure: Figure, table: Sequence[Figure] = FIGURES) -> int:
    """The bits a span reports when it states `figure`: its own, and those of the figures
    it is a term of (stating the input states the total, their sum: rule 5)."""
    return figure.bit | bits(other for other in table if figure.name in other.sum_of)


#: Every figure a span can state, one bit each (rule 2 counts usage figure by figure).
REPORTS_ALL: Final = bits(STATED)
#: The token figures that are no part of another (input, output, total): tokens counted
#: at a span with no price make it unpriced.
REPORTS_TOKENS: Final = bits(f for f in TOKEN_FIGURES if f.part_of is None)
#: The money a span states (its cost).
REPORTS_COST: Final = bits(f for f in STATED if f.kind == "money")


def stated_value(holder: Any, figure: Figure) -> Any:
    """The value of `figure` as stated by `holder` (a `Usage`, say): its own, or for a sum
    (the total) the sum of its terms when any is stated (rule 5); `None` when none is."""
    value = getattr(holder, figure.name)
    if value is not None or not figure.sum_of:
        return value
    terms = [getattr(holder, name) for name in figure.sum_of]
    if all(term is None for term in terms):
        return None
    return sum(term or 0 for term in terms)


# --- Code generated from the table ---------------------------------------------------------
# The functions below run once per node of a tree (100,000 nodes take a fraction of a
# second), so they are generated from the table as straight-line code, the code one would
# write by hand for each figure, instead of looping over the table at every call.


def _compile(source: str, name: str, namespace: dict[str, Any], doc: str | None) -> Any:
    """The function `name` defined by `source`; its docstring says what it is and shows
    the code generated (`help(sum_figures)`)."""
    exec(compile(source, f"<agenta_notebook.core.fields: {name}>", "exec"), namespace)
    function = namespace[name]
    shown = "\n".join(f"    {line}" for line in source.splitlines())
    function.__doc__ = f"{doc}\n\nGenerated from the table of figures:\n\n{shown}"
    return function


def _stated_expression(figure: Figure, holder: str) -> str:
    """`stated_value(holder, figure)` as an expression."""
    own = f"{holder}.{figure.name}"
    if not figure.sum_of:
        return own
    terms = [f"{holder}.{name}" for name in figure.sum_of]
    none = " and ".join(f"{term} is None" for term in terms)
    total = " + ".join(f"({term} or 0)" for term in terms)
    return f"({own} if {own} is not None else (None if {none} else {total}))"


def _builder(figures_class: type) -> Callable[..., Any]:
    """What the generated code calls to make a `figures_class`: its fast constructor
    (`core.frozen`), or the class itself when it is not a frozen slots dataclass."""
    try:
        return fast_constructor(figures_class)
    except TypeError:
        return figures_class


def make_sum(figures_class: type, table: Sequence[Figure]) -> Callable[[Iterable[Any]], Any]:
    """`sum_figures` for this class and table: the sum of several figures in one pass (one
    allocation, not one per addition). Tokens add up, `None` where no part has any;
    money adds up exactly (in `COST_CONTEXT`); counts add up from 0."""
    lines = ["def sum_figures(parts):"]
    for figure in table:
        lines.append(f"    {figure.name}_sum = {figure.default!r}")
    lines.append("    for part in parts:")
    for figure in table:
        total = f"{figure.name}_sum"
        if figure.kind == "count":
            lines.append(f"        {total} += part.{figure.name}")
            continue
        added = f"add_money({total}, value)" if figure.kind == "money" else f"{total} + value"
        lines += [
            f"        value = part.{figure.name}",
            "        if value is not None:",
            f"            {total} = value if {total} is None else {added}",
        ]
    lines.append("    return Figures(")
    lines += [f"        {figure.name}_sum," for figure in table]
    lines.append("    )")
    namespace = {"Figures": _builder(figures_class), "add_money": COST_CONTEXT.add}
    function: Callable[[Iterable[Any]], Any] = _compile(
        "\n".join(lines), "sum_figures", namespace, make_sum.__doc__
    )
    return function


def make_counted(figures_class: type, table: Sequence[Figure]) -> Callable[..., Any]:
    """`counted_figures` for this class and table: the figures a span counts itself, from
    its `usage` and the mask of the figures `counted` there. Token counts come from the
    usage (a sum from its terms, rule 5); the others are arguments named like the figure
    (the cost: the price, which is the stated cost when there is one)."""
    parameters = [figure.name for figure in table if figure.kind != "tokens"]
    values = []
    for figure in table:
        if figure.kind == "tokens" and figure.bit:
            values.append(
                f"{_stated_expression(figure, 'usage')} if counted & {figure.bit} else None"
            )
        elif figure.kind == "tokens":
            values.append("None")
        else:
            values.append(figure.name)
    source = "\n".join(
        [
            f"def counted_figures(usage, counted, {', '.join(parameters)}):",
            "    return Figures(",
            *[f"        {value}," for value in values],
            "    )",
        ]
    )
    function: Callable[..., Any] = _compile(
        source,
        "counted_figures",
        {"Figures": _builder(figures_class)},
        make_counted.__doc__,
    )
    return function


def make_stated_mask(table: Sequence[Figure]) -> Callable[[Any], int]:
    """`stated_mask` for this table: the `REPORTS_*` bits of the figures a `Usage` states
    (the total counts as stated when an input or output is: it is then their sum)."""
    lines = ["def stated_mask(usage):", "    mask = 0"]
    for figure in table:
        if figure.bit:
            lines += [
                f"    if usage.{figure.name} is not None:",
                f"        mask |= {implied_bits(figure, table)}",
            ]
    lines.append("    return mask")
    function: Callable[[Any], int] = _compile(
        "\n".join(lines), "stated_mask", {}, make_stated_mask.__doc__
    )
    return function


#: The sum of several figures, in one pass.
sum_figures: Final[Callable[[Iterable[Figures]], Figures]] = make_sum(Figures, FIGURES)
#: `counted_figures(usage, counted, cost=..., model_calls=..., unpriced_calls=...,
#: errors=...)`: what a span counts itself (see `make_counted`).
counted_figures: Final[Callable[..., Figures]] = make_counted(Figures, FIGURES)
#: The `REPORTS_*` mask of the figures a `Usage` states.
stated_mask: Final[Callable[[Any], int]] = make_stated_mask(FIGURES)

NO_FIGURES: Final = Figures()
