"""The paper's two tables in its own layout, and Figure 8's trend (Section 3, Appendix E.2).

Table 1: rows are the object counts a model was trained on (1, 1-2, 1-3, 1-5), columns the experiments (Exp 1:
the global model with every object labelled; Exp 2: one object labelled; Exp 3: the patch-local model with one
label; colour: the global model conditioned on the colours of every object). Table 2: the same rows for the global
location model under four label modes (all, single, a random number, all but one). Each cell: lcsbench's k_max
beside the paper's value.

Which cell a model fills is derived from what it is (model kind, conditioning, label mode, training counts),
never from its name: a new experiment lands in its cell by being described. With one training object every label
mode names that object, so the 1-object global location model stands for Exp 1, Exp 2 and both random modes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

ROWS = ("1", "1-2", "1-3", "1-5")
TABLE1_COLUMNS = ("exp1", "exp2", "exp3", "color")
TABLE2_COLUMNS = ("all", "single", "random", "drop_one")
COLUMN_TITLES = {"exp1": "Exp 1 (all labels)", "exp2": "Exp 2 (one label)", "exp3": "Exp 3 (patch-local)",
                 "color": "colour", "all": "all labelled", "single": "one labelled",
                 "random": "a random number labelled", "drop_one": "all but one labelled"}
CELL_KEYS = ("k_max", "k_max_notation", "k_max_strict", "paper", "weights", "steps")
# label modes that name the only object of a 1-object scene, as "all" does
SAME_AS_ALL_ON_ONE_OBJECT = ("single", "random")


def counts_label(counts: Sequence[int]) -> str:
    """Training counts as the tables' row name: (1,) -> "1", (1, 2, 3) -> "1-3"."""
    counts = sorted(int(c) for c in counts)
    if not counts or counts != list(range(counts[0], counts[-1] + 1)):
        raise ValueError(f"a table row is a run of consecutive object counts, got {counts}")
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def table1_columns(model: Mapping) -> list[str]:
    """The Table 1 columns a model fills (none, one, or on 1 object Exp 1's and Exp 2's both)."""
    kind, conditioning, mode = model["kind"], model["conditioning"], model["label_mode"]
    one_object = list(model["counts"]) == [1]
    if conditioning == "color":
        return ["color"] if kind == "global" and mode == "all" else []
    if kind == "patch":
        return ["exp3"] if mode == "single" or one_object else []
    if mode == "all" or (one_object and mode in SAME_AS_ALL_ON_ONE_OBJECT):
        return ["exp1", "exp2"] if one_object else ["exp1"]
    return ["exp2"] if mode == "single" else []


def table2_column(model: Mapping) -> str | None:
    """The Table 2 column of a global location model (its label mode), else None."""
    if model["kind"] != "global" or model["conditioning"] != "location":
        return None
    return model["label_mode"] if model["label_mode"] in TABLE2_COLUMNS else None


def paper_tables(models: Mapping[str, Mapping]) -> dict:
    """{"table1": {row: {column: cell}}, "table2": {...}} from each model's description and results:
    `kind` (global | patch), `conditioning`, `label_mode`, `counts`, `paper` (the paper's value, notation),
    `k_max`, `k_max_strict`, `k_max_notation` (None where not yet measured) and `weights`. Two models for one
    cell are refused (say which one stands for it)."""
    tables: dict[str, dict[str, dict[str, dict]]] = {"table1": {}, "table2": {}}
    for name, model in models.items():
        row = counts_label(model["counts"])
        if row not in ROWS:
            continue
        placements = [("table1", column) for column in table1_columns(model)]
        if row != "1" and table2_column(model):
            placements.append(("table2", table2_column(model)))
        for table, column in placements:
            cells = tables[table].setdefault(row, {})
            if column in cells:
                raise ValueError(f"{table} row {row} column {column}: both {cells[column]['experiment']} and "
                                 f"{name} fit it; give only one of them to paper_tables")
            cells[column] = {"experiment": name, **{key: model.get(key) for key in CELL_KEYS}}
    return tables


def cell_text(cell: Mapping | None) -> str:
    """ "lcsbench k_max (paper's value)", with "not run" where no model or no result stands for it."""
    if cell is None:
        return "-"
    ours = cell.get("k_max_notation") or (None if cell.get("k_max") is None else str(cell["k_max"]))
    return f"{ours or 'not run'} ({cell.get('paper') or '-'})"


def table_markdown(table: Mapping[str, Mapping[str, Mapping]], columns: Sequence[str], rows: Sequence[str],
                   title: str) -> list[str]:
    """One of the paper's tables as markdown lines: rows of training counts, a cell per column."""
    lines = [f"**{title}** (each cell: lcsbench k_max (the paper's))", "",
             "| trained on | " + " | ".join(COLUMN_TITLES[c] for c in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for row in rows:
        cells = table.get(row, {})
        lines.append(f"| {row} object{'s' if row != '1' else ''} | "
                     + " | ".join(cell_text(cells.get(c)) for c in columns) + " |")
    trained = {cell["experiment"]: cell["steps"] for cells in table.values() for cell in cells.values()
               if cell.get("steps") is not None}
    if trained:  # the models of one table may have trained for different numbers of steps: say so
        lines += ["", "Training steps: " + ", ".join(f"{name} {steps}" for name, steps in trained.items()) + "."]
    return lines


def leading_number(notation: str | None) -> int | None:
    """The k of a notation such as "9+(0-2)" or "1 (one object whatever k)"; None if there is none."""
    match = re.match(r"\s*(\d+)", notation or "")
    return int(match.group(1)) if match else None


def trend_figure(table: Mapping[str, Mapping[str, Mapping]], columns: Sequence[str], title: str) -> Figure:
    """k_max against the largest training count, one line per column (the paper's Figure 8 trend): lcsbench
    solid, the paper's values dashed in the same colour."""
    figure = Figure(figsize=(6.0, 4.2))
    axis = figure.add_subplot(1, 1, 1)
    for i, column in enumerate(columns):
        ours, paper = [], []
        for row in ROWS:
            cell = table.get(row, {}).get(column)
            if cell is None:
                continue
            trained = int(row.split("-")[-1])
            if cell.get("k_max") is not None:
                ours.append((trained, cell["k_max"]))
            if leading_number(cell.get("paper")) is not None:
                paper.append((trained, leading_number(cell["paper"])))
        color = f"C{i}"
        if ours:
            axis.plot(*zip(*ours), "o-", color=color, label=f"{COLUMN_TITLES[column]}")
        if paper:
            axis.plot(*zip(*paper), "x--", color=color, alpha=0.6, label=f"{COLUMN_TITLES[column]}, paper")
    axis.set_xlabel("largest object count in training")
    axis.set_ylabel("k_max")
    axis.set_xticks([1, 2, 3, 5])
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    return figure
