"""`make eval-memory`: long-term memory in LongMemEval's five abilities, measured through the public API.

- `dataset`: the instances (sessions to replay, questions to ask) and the readers of LongMemEval's and
  LoCoMo's JSON files (auto-detected), which give the same shape;
- `generator`: the default synthetic set, deterministic for a seed, written in LongMemEval's JSON shape;
- `scoring`: offline scoring (normalized containment, abstention) and LongMemEval's judge prompts;
- `harness`: starts the mesh, replays, asks, measures and writes bench/results/memory-eval.{md,json}.
"""
