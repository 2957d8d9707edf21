"""The study's experiments: Table 1's location rows, Figure 4's pair, Tables 1 and 2 over training counts, the
colour column, and the training-free closed forms. One `register` each (records.py says what the fields mean)."""

from __future__ import annotations

from lcsbench.study.records import GLOBAL, PATCH, Experiment, cpu, register, smoke

TABLE1_1TO3 = "Table 1, 1-3 objects"


# --- Table 1, 1-3 objects, and Figure 4: the committed cpu study --------------------------------------------------
register(Experiment(
    "exp1", f"Exp 1: {GLOBAL}, all objects labelled", "global", "1-3", "all", paper="9", source=TABLE1_1TO3,
    prediction="length-generalizes: k_max >= 4 under the cell rule", k_max_at_least=4,
    configs={"smoke": smoke("exp1"), "cpu": cpu("exp1"), "paper": ("configs/exp1.yaml",)}, colour="tab:blue"))
register(Experiment(
    "exp2", f"Exp 2: {GLOBAL}, one object labelled", "global", "1-3", "single", paper="1+(0-2)", source=TABLE1_1TO3,
    prediction="fails: k = 1 success >= 50% and k_max <= 2", k_max_at_most=2, learned_first=True,
    configs={"smoke": smoke("exp2"), "cpu": cpu("exp2"), "paper": ("configs/exp2.yaml",)}, colour="tab:red"))
register(Experiment(
    "exp3", f"Exp 3: {PATCH}, one object labelled", "patch", "1-3", "single", paper="9+(0-2)", source=TABLE1_1TO3,
    prediction="length-generalizes: k_max >= 4 with 0-2 extra objects", k_max_at_least=4,
    configs={"smoke": smoke("exp3", patch=True), "cpu": cpu("exp3", patch=True), "paper": ("configs/exp3.yaml",)},
    colour="tab:green"))
register(Experiment(
    "fig4_global", f"Fig. 4: {GLOBAL} trained on 1 object", "global", "1", "all",
    paper="1 (one object whatever k)", source="Figure 4", prediction="fails: k_max <= 1", k_max_at_most=1,
    configs={"cpu": cpu("fig4_global")}, colour="tab:orange"))
register(Experiment(
    "fig4_local", f"Fig. 4: {PATCH} trained on 1 object", "patch", "1", "all", paper="6", source="Figure 4",
    prediction="length-generalizes: k_max >= 3", k_max_at_least=3, configs={"cpu": cpu("fig4_local", patch=True)},
    colour="tab:purple"))

# --- Tables 1 and 2 over training counts, and the colour column (the cpu scale's next models) -------------------
_NEW = (  # name, title, model, counts, labels, conditioning, paper value, source, bounds (at least, at most)
    ("exp1_1to2", f"Exp 1 on 1-2 objects: {GLOBAL}, all labelled", "global", "1-2", "all", "location", "5",
     "Table 1, 1-2 objects", (None, None)),
    ("exp1_1to5", f"Exp 1 on 1-5 objects: {GLOBAL}, all labelled", "global", "1-5", "all", "location", "10",
     "Table 1, 1-5 objects", (5, None)),
    ("exp2_1to5", f"Exp 2 on 1-5 objects: {GLOBAL}, one labelled", "global", "1-5", "single", "location",
     "1+(0-4)", "Table 1, 1-5 objects", (None, 2)),
    ("exp3_1to5", f"Exp 3 on 1-5 objects: {PATCH}, one labelled", "patch", "1-5", "single", "location", "10+(0-2)",
     "Table 1, 1-5 objects", (5, None)),
    ("random_1to3", f"{GLOBAL}, a random number labelled, 1-3 objects", "global", "1-3", "random", "location", "5",
     "Table 2, 1-3 objects", (None, None)),
    ("random_1to5", f"{GLOBAL}, a random number labelled, 1-5 objects", "global", "1-5", "random", "location", "8",
     "Table 2, 1-5 objects", (4, None)),
    ("drop_one_1to3", f"{GLOBAL}, all but one labelled, 1-3 objects", "global", "1-3", "drop_one", "location",
     "3+(0-1)", "Table 2, 1-3 objects", (None, None)),
    ("drop_one_1to5", f"{GLOBAL}, all but one labelled, 1-5 objects", "global", "1-5", "drop_one", "location",
     "9+(0-1)", "Table 2, 1-5 objects", (4, None)),
    ("color_1", f"Colour: {GLOBAL} on 1 object, all colours", "global", "1", "all", "color", "1",
     "Table 1, 1 object, colour", (None, 1)),
    ("color_1to3", f"Colour: {GLOBAL} on 1-3 objects, all colours", "global", "1-3", "all", "color", "4",
     "Table 1, 1-3 objects, colour", (None, None)),
    ("color_1to5", f"Colour: {GLOBAL} on 1-5 objects, all colours", "global", "1-5", "all", "color", "7",
     "Table 1, 1-5 objects, colour", (4, None)),
)
for (_name, _title, _model, _counts, _labels, _conditioning, _value, _source, (_least, _most)) in _NEW:
    _bound = " and ".join(text for text in (f"k_max >= {_least}" if _least is not None else "",
                                            f"k_max <= {_most}" if _most is not None else "") if text)
    register(Experiment(
        _name, _title, _model, _counts, _labels, _conditioning, paper=_value, source=_source,
        prediction=_bound or "measured beside the paper's value (no pre-registered bound)", k_max_at_least=_least,
        k_max_at_most=_most, learned_first=_name == "exp2_1to5",
        configs={"cpu": cpu(_name, patch=_model == "patch")}))

# --- the closed forms: the theory without training (training-free denoisers of the render's training split) -----
_CLOSED_PREDICTION = {"local": "k_max > 3 (beyond the trained counts), with either labels",
                      "empirical": "k_max <= 3 (redraws training scenes)"}
_CLOSED_TITLE = {"local": "local score machine", "empirical": "empirical denoiser"}
_LABELS_TITLE = {"all": "all objects labelled", "single": "one object labelled"}
_CLOSED_COLOUR = {("local", "all"): "tab:cyan", ("local", "single"): "tab:olive", ("empirical", "all"): "tab:brown",
                  ("empirical", "single"): "tab:pink"}
for _kind in ("local", "empirical"):
    for _mode in ("all", "single"):
        register(Experiment(
            f"cf_{_kind}_{_mode}", f"Closed form: {_CLOSED_TITLE[_kind]}, {_LABELS_TITLE[_mode]}", "closed_form",
            "1-3", _mode, prediction=_CLOSED_PREDICTION[_kind], k_max_at_least=4 if _kind == "local" else None,
            k_max_at_most=3 if _kind == "empirical" else None, closed_form=_kind, geometry_from="exp3",
            colour=_CLOSED_COLOUR[_kind, _mode]))

# --- the yardsticks of the hypothesis: the local score machine of every trained global location model's own labels
# and object counts, for its r2 (never sampled: the four closed forms above are the judged ones) ------------------
_YARDSTICKS = (("all", "1"), ("all", "1-2"), ("all", "1-5"), ("single", "1-5"), ("random", "1-3"), ("random", "1-5"),
               ("drop_one", "1-3"), ("drop_one", "1-5"))
for _mode, _counts in _YARDSTICKS:
    register(Experiment(
        f"cf_local_{_mode}_{_counts.replace('-', 'to')}", f"Local score machine, {_mode} labels, {_counts} objects",
        "closed_form", _counts, _mode, prediction="r2 yardstick only", closed_form="local", geometry_from="exp3",
        judged=False))
