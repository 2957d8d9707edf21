"""The report's view of the whole paper (study/paper.py): the colour gate, the hypothesis points and goals."""

import lcsbench.study.experiments  # noqa: F401 - registers the study's experiments
from lcsbench.study import paper
from lcsbench.study.scales import SCALES


class FakeStudy:
    """The two things paper.py asks of a study: the scale and the records (here the real cpu scale's)."""

    scale = SCALES["cpu"]

    @staticmethod
    def record_of(name):
        from lcsbench.study.records import REGISTRY
        return REGISTRY[name]

    @staticmethod
    def weights(name):
        return f"weights/{name}.pt"


def locality(radius_at_10):
    return {"sigmas": [1.0, 10.0, 40.0], "conditional_radius_mean": [9.0, radius_at_10, radius_at_10 + 1]}


def test_a_colour_k_max_counts_only_where_the_judge_reads_the_oracle():
    assert paper.colour_gate(6, {"passes_90_up_to_k": 4}) == (4, 4)
    assert paper.colour_gate(3, {"passes_90_up_to_k": 8}) == (3, 8)
    assert paper.colour_gate(3, None) == (3, None)
    summary = {"experiments": {"color_1to5": {"k_max": 6, "k_max_notation": "6", "k_max_strict": 5}},
               "oracle": {"per_experiment": {"color_1to5": {"passes_90_up_to_k": 4}}}}
    models = paper.table_models(FakeStudy, summary)
    assert models["color_1to5"]["k_max"] == 4 and "judge limit" in models["color_1to5"]["k_max_notation"]
    assert models["exp1_1to5"]["k_max"] is None  # not run yet: its cell says so
    tables = paper.paper_tables(FakeStudy, summary)
    assert tables["table1"]["1-5"]["color"]["k_max"] == 4 and tables["table1"]["1-5"]["color"]["paper"] == "7"


def test_the_hypothesis_pairs_each_model_with_its_own_local_machine_and_draws_patch_models_apart():
    experiments = {"exp1": {"k_max": 4, "locality": locality(12.0)}, "exp2": {"k_max": 2, "locality": locality(15.0)},
                   "fig4_global": {"k_max": 1, "locality": locality(16.0)},
                   "exp3": {"k_max": 5, "locality": locality(4.0)}}
    r2s = {"exp1": {"sigmas": [1.0, 2.0, 10.0], "r2": {"cf_empirical_all": [0.1, 0.1, 0.1],
                                                        "cf_local_all": [0.7, 0.8, 0.9]}},
           "exp2": {"sigmas": [1.0, 2.0, 10.0], "r2": {"cf_local_single": [0.5, 0.4, 0.6]}}}
    numbers = paper.hypothesis(FakeStudy, {"experiments": experiments}, r2s)
    assert set(numbers["points"]) == {"exp1", "exp2", "fig4_global"} and set(numbers["patch_local"]) == {"exp3"}
    assert numbers["points"]["exp1"]["r2@2"] == 0.8 and numbers["points"]["exp1"]["r2_against"] == "cf_local_all"
    assert numbers["points"]["fig4_global"]["r2@2"] is None  # no r2 run: left out of that rho
    radius = numbers["relations"]["radius@10"]
    assert radius["rho"] == -1.0 and radius["n"] == 3
    assert numbers["relations"]["r2@2"]["rho"] is None  # two models: undefined
    measured, passed = paper.hypothesis_check(numbers)
    assert passed is None and measured["radius@10"]["rho"] == -1.0


def test_figure5_goal_needs_an_encoder_layer_below_chance_and_a_lower_feature_space():
    def model(space, below):
        return {"unet.enc.32x32_block0": {"part": "encoder", "below_chance": below},
                "unet.dec.32x32_block0": {"part": "decoder", "below_chance": True},
                paper.FEATURE_SPACE: {"part": "average", "mean_abs_off_diagonal": space}}
    assert paper.figure5_check({"color_1to5": model(0.1, True), "color_1": model(0.3, False)})[1] is True
    assert paper.figure5_check({"color_1to5": model(0.1, False), "color_1": model(0.3, False)})[1] is False
    assert paper.figure5_check({"color_1to5": model(0.4, True), "color_1": model(0.3, False)})[1] is False
