"""Length-generalization protocol (paper Section 2, Table 1, Appendix E.2), made automatic and counting.

The paper conditions on k = 1..12 of twelve fixed locations (or k = 1..8 colours), draws 8 samples per k and
counts objects by eye. Here a detector (the judge) returns object centres (and, for colour, object colours)
per image, and these pure functions turn them into per-k scores:

1. requests: `requested_locations(k)` (the first k of PAPER_LOCATIONS, or a random k-subset) and
   `requested_colors(k)` (the first k of PAPER_COLORS);
2. matching: `match_locations` pairs detections with requested centres by the Hungarian algorithm
   (scipy.optimize.linear_sum_assignment) and keeps pairs within `tolerance_cells` grid cells
   (default 1 cell = resolution / G pixels). Two rules (`MATCH_RULES`): `cell` (default, the paper's: a
   location is a grid cell, as the model is told; a detection matches when its centre lies within the
   tolerance of the requested cell's centre along each axis) and `point` (Euclidean distance to the requested
   point itself: stricter, since a point on a cell edge is half a cell from where a correct object may sit);
   `match_colors` matches colour multisets. Both return
   `{"matched", "missing", "extra", "detected"}`: requested objects found, requested objects not found,
   detections matched to no request;
3. success (`SuccessRule`, E.2): every requested object present (missing = 0, at its location or of its
   colour) and a number of extra objects the training data showed beside the named ones; with n the largest
   trained object count, at every k (inside and beyond the trained counts), for both kinds:
   - `all` (Exp. 1, colour): exactly the requested objects (extra = 0);
   - `single` (Exp. 2/3) and `random` (Table 2): 0 to n - 1 extra objects (the paper's "k+(0-(n-1))", e.g.
     "1+(0-2)" for 1-3 objects);
   - `drop_one` (Table 2): exactly one extra object;
4. aggregation: `LengthGenTally` accumulates per-k counts (samples, successes, missing, extra, histogram
   of detected counts) that add across processes; `summarize` gives per-k rates and
   `k_max` = the largest k with success rate > 25% for every k' <= k (the paper's rule), `k_max_strict`
   the same with > 50%.

`lengthgen.json` (written by `python -m lcsbench lengthgen`, see `lengthgen_report`):

    {
      "protocol": {"kind", "ks", "order", "match", "tolerance_cells", "grid_size", "resolution",
                   "trained_counts", "label_mode", "samples_per_k", "success_rule"},
      "rows": {
        "model":  {"k_max", "k_max_strict", "per_k": {"<k>": {"samples", "successes", "success_rate",
                   "mean_missing", "mean_extra", "mean_detected", "count_histogram": {"<count>": n}}}},
        "oracle": {... same keys, the judge on Blender renders of the same requested layouts ...}
      }
    }

The oracle row measures the judge's own error on exact renders of the requests: a model's row is
trustworthy only up to the k where the oracle row stays near 100%.

The package holds one module per part: `protocol` (requests, success rule, settings), `matching`, `tally`
(counts, k_max, the report), `figures` and `study` (`run`: the whole study in one call, and its steps). Every
name is re-exported here, so `from lcsbench.analysis.lengthgen import X` keeps working for its importers.

A notebook runs the whole study in one line:

    result = run(model.denoiser, load_judge(None, resolution=64), LengthGenProtocol(SuccessRule("location", (1, 2, 3))))
"""

from lcsbench.analysis.lengthgen.figures import detection_grid, plot_success_curves, save_figures
from lcsbench.analysis.lengthgen.matching import judge_request, match_colors, match_locations
from lcsbench.analysis.lengthgen.protocol import (MATCH_RULES, LengthGenProtocol, SuccessRule, cell_centres_pixels,
                                                  check_match_rule, check_tolerance, crowding, fractions_to_pixels,
                                                  oracle_scene, protocol_requests, request_conditioner,
                                                  requested_colors, requested_locations)
from lcsbench.analysis.lengthgen.study import (Result, judge_images, load_samples, model_samples, render_oracle, run,
                                               sample_requests, save_samples)
from lcsbench.analysis.lengthgen.tally import (K_MAX_STRICT_THRESHOLD, K_MAX_THRESHOLD, TABLE_HEADER,
                                               LengthGenTally, k_max, lengthgen_report, table_row)
