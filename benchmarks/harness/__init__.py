"""The shared study harness: plants (`plants`), arms (`arms`), the arms x seeds grid with its pool and resume
(`grid`), statistics and verdicts (`stats`), and paired micro-experiments on the trainer's own loss (`micro`).

Studies import it as `from benchmarks.harness import stats` and run as `python -m benchmarks.<study>` from the
repository root (the one mechanism: no `sys.path` edits).
"""
