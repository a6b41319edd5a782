"""The benchmark studies: run each from the repository root as a module, `python -m benchmarks.<study>`.

Every study is data (its arms as config overrides, `benchmarks.harness.arms`) plus a short script on one shared
harness (`benchmarks.harness`): one plant registry, one pool with resume, one statistics module, and the
micro-experiment helper that applies the trainer's own `compute_loss`.
"""
