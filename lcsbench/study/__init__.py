"""The study as data: the paper's experiments as records, the scales they run at, and the stages that run them.

Below `commands/` (the `reproduce` command parses its flags and calls `run_study`), above `models/`, `analysis/`,
`callbacks/` and `data/`: see docs/architecture.md.

- `records`: one frozen `Experiment` per model of the study (trained or closed form): its conditioning, labels,
  training counts, model kind, the paper's value and what the study predicts of it, its config stack per scale;
- `scales`: `Scale` (the renders keyed by object counts, the evaluation flags) and `SCALES` (smoke, cpu, paper);
- `runner`: one invocation (`Study`), its command log, timings, jobs and lock;
- `stages`, `export`, `evaluate`, `report`: the stages render, fit, export, evaluate, report;
- `goals`: the pre-registered goals, checked on the report's numbers.

Adding an experiment is one `register(Experiment(...))` and one small config delta.
"""
