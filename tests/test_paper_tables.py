"""Tables 1 and 2 in the paper's layout (analysis/paper_tables.py): cells derived from what a model is."""

import pytest
from PIL import Image

from lcsbench.analysis.paper_tables import (counts_label, paper_tables, table_markdown, trend_figure,
                                            TABLE1_COLUMNS, TABLE2_COLUMNS, ROWS)
from lcsbench.analysis.plots import save_figure


def model(kind="global", conditioning="location", label_mode="all", counts=(1, 2, 3), k_max=None, paper="9",
          steps=None):
    return {"kind": kind, "conditioning": conditioning, "label_mode": label_mode, "counts": list(counts),
            "k_max": k_max, "k_max_strict": k_max, "k_max_notation": None if k_max is None else str(k_max),
            "paper": paper, "weights": None, "steps": steps}


def test_counts_label_names_consecutive_runs_only():
    assert counts_label([1]) == "1" and counts_label([3, 1, 2]) == "1-3" and counts_label(range(1, 6)) == "1-5"
    with pytest.raises(ValueError, match="consecutive"):
        counts_label([1, 3])


def test_each_model_lands_in_the_cells_its_description_says():
    tables = paper_tables({
        "exp1": model(k_max=4, steps=10000), "exp2": model(label_mode="single", k_max=1, paper="1+(0-2)"),
        "exp3": model(kind="patch", label_mode="single", k_max=5, paper="9+(0-2)"),
        "fig4_global": model(counts=[1], k_max=1, paper="1", steps=6000),
        "fig4_local": model(kind="patch", counts=[1], paper="6"),
        "color_1to5": model(conditioning="color", counts=range(1, 6), paper="7"),
        "drop_one_1to5": model(label_mode="drop_one", counts=range(1, 6), paper="9+(0-1)"),
        "random_1to3": model(label_mode="random", paper="5")})
    t1, t2 = tables["table1"], tables["table2"]
    assert t1["1-3"]["exp1"]["experiment"] == "exp1" and t2["1-3"]["all"]["experiment"] == "exp1"
    assert t1["1-3"]["exp2"]["experiment"] == "exp2" and t2["1-3"]["single"]["experiment"] == "exp2"
    assert t1["1"]["exp1"]["experiment"] == t1["1"]["exp2"]["experiment"] == "fig4_global"  # one object: = Exp 1
    assert "1" not in t2  # Table 2 starts at 1-3
    assert t1["1"]["exp3"]["experiment"] == "fig4_local" and t1["1-3"]["exp3"]["k_max"] == 5
    assert t1["1-5"]["color"]["paper"] == "7" and t2["1-5"]["drop_one"]["experiment"] == "drop_one_1to5"
    assert t2["1-3"]["random"]["experiment"] == "random_1to3" and "random" not in t1.get("1-3", {})
    lines = table_markdown(t1, TABLE1_COLUMNS, ROWS, "Table 1")
    assert "| 1-3 objects | 4 (9) | 1 (1+(0-2)) | 5 (9+(0-2)) | - |" in lines
    assert "not run (7)" in "\n".join(lines)
    assert lines[-1] == "Training steps: exp1 10000, fig4_global 6000."  # cells trained for different lengths
    assert "| 1-5 objects | - | - | - | not run (8) |" not in table_markdown(t2, TABLE2_COLUMNS, ROWS, "T2")


def test_two_models_for_one_cell_are_refused():
    with pytest.raises(ValueError, match="both a and b"):
        paper_tables({"a": model(), "b": model()})


def test_trend_figure_draws(tmp_path):
    tables = paper_tables({"exp1": model(k_max=4), "fig4_global": model(counts=[1], k_max=1, paper="1"),
                           "exp1_1to5": model(counts=range(1, 6), k_max=6, paper="10")})
    path = save_figure(trend_figure(tables["table1"], TABLE1_COLUMNS, "k_max vs training count"),
                       tmp_path / "trend.png")
    assert Image.open(path).size[1] > 200
