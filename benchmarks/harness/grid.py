"""Arms x seeds x plants: each run built through `cli.build_trainer` (the path `ce-gppo train` takes), one pool of
worker processes, one JSON file per finished run (a restarted study skips it), and a loader.

`build` parses the plant's recipe plus the arm's fields and the run's own with `cli.parse_train_args`, exactly as a
command line would, and calls `cli.build_trainer`; a plant that brings its own data (`Plant.data`) swaps the
trainer's training set before training. `run_grid` runs a study's `run(job)` function for every job whose JSON is
not saved yet, in this process (`workers=1`, the default: this machine has 2 cores shared by several people) or in a
pool of spawned processes with one torch thread each.

Example:
    >>> from functools import partial
    >>> jobs = [Job("quickstart", arm, seed) for arm in ("GPPO (1, 1)", "CE-GPPO (0.5, 1)") for seed in range(3)]
    >>> run = partial(train_curves, "outputs/my_study", {"max_steps": 40})
    >>> run_grid(jobs, run, out_dir="outputs/my_study", workers=1)  # doctest: +SKIP
    >>> runs = load_runs(jobs, "outputs/my_study")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from .arms import ARMS, Arm
from .plants import PLANTS, ROOT, Plant


@dataclass(frozen=True)
class Job:
    """One run of a grid: a plant, an arm (by name) and a seed; `tag` tells probes of the same cell apart."""

    plant: str
    arm: str
    seed: int
    tag: str = ""

    @property
    def name(self) -> str:
        prefix = f"{self.plant}-" if self.plant else ""
        return f"{prefix}{slug(self.arm)}{self.tag}-seed{self.seed}"


def slug(name: str) -> str:
    """A file-name form of an arm's name: `CE-GPPO (0.5, 1)` -> `ce-gppo-0-5-1`."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def run_path(out_dir: str, job: Job) -> str:
    return os.path.join(out_dir, "runs", f"{job.name}.json")


def cli_argv(plant: Plant, fields: dict[str, Any]) -> list[str]:
    """The `ce-gppo train` arguments of the plant's recipe plus `fields` (later ones win), as a user types them."""
    argv = ["--config", os.path.join(ROOT, plant.recipe)] if plant.recipe else []
    for key, value in fields.items():
        if value is None:
            continue  # the field's default (the command line cannot spell None for an optional number)
        if isinstance(value, list | tuple):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def parse(
    plant: str | Plant, fields: dict[str, Any], *, seed: int, output_dir: str, model_dir: str | None = None
) -> tuple[Any, Any, Any]:
    """`cli.parse_train_args` of the plant's recipe and fields, then `fields` (an arm's and the run's), `seed` as
    `seed` and `data_seed`, `output_dir`: (script arguments, `CEGPPOConfig`, `ModelConfig`), as a command line."""
    from ce_gppo_trl.cli import parse_train_args

    plant = PLANTS[plant] if isinstance(plant, str) else plant
    merged = {**plant.cli_fields(model_dir), "seed": seed, "data_seed": seed, "output_dir": output_dir, **fields}
    return parse_train_args(cli_argv(plant, merged))


def build(
    plant: str | Plant,
    fields: dict[str, Any],
    *,
    seed: int,
    output_dir: str,
    model_dir: str | None = None,
    train_dataset: Any = None,
) -> Any:
    """A `CEGPPOTrainer` through `parse` + `cli.build_trainer`. The plant's model is built once into `model_dir`;
    `train_dataset` (default: the plant's own data, if it has any) replaces the recipe's."""
    from transformers import set_seed

    from ce_gppo_trl.cli import build_trainer

    plant = PLANTS[plant] if isinstance(plant, str) else plant
    if plant.build is not None and model_dir is not None:
        plant.build(model_dir)
    script_args, args, model_args = parse(plant, fields, seed=seed, output_dir=output_dir, model_dir=model_dir)
    set_seed(seed)
    trainer = build_trainer(script_args, args, model_args)
    if train_dataset is None and plant.data is not None:
        train_dataset = plant.data(seed)[0]
    if train_dataset is not None:
        trainer.train_dataset = train_dataset  # read when train() builds its dataloader
    return trainer


def quiet(trainer: Any) -> Any:
    """Drop the callback that prints every step's log dict (the logs stay in `trainer.state.log_history`)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def series(history: list[dict[str, Any]], key: str) -> list[float]:
    """A logged metric's values, one per logged step (the final summary entry left out)."""
    return [entry[key] for entry in history if key in entry and "step" in entry and "train_runtime" not in entry]


def train_curves(out_dir: str, fields: dict[str, Any], job: Job, arms: dict[str, Arm] = ARMS) -> dict[str, Any]:
    """The default run of a grid: `job`'s plant with `fields` (the study's budget) and the arm's fields, built through
    `build` and trained; returns the logged entropy, reward and clip-region curves and the wall time."""
    import time

    output_dir = os.path.join(out_dir, "trainer", job.name)
    trainer = quiet(build(job.plant, {**fields, **arms[job.arm].fields}, seed=job.seed, output_dir=output_dir))
    start = time.perf_counter()
    trainer.train()
    history = trainer.state.log_history
    return {
        "plant": job.plant,
        "arm": job.arm,
        "seed": job.seed,
        "seconds": time.perf_counter() - start,
        "entropy": series(history, "entropy"),
        "reward": series(history, "reward"),
        "clip_region": series(history, "clip_ratio/region_mean"),
    }


def _run_and_save(run: Callable[[Job], dict[str, Any]], job: Job, path: str) -> str:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    result = run(job)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(path + ".tmp", path)
    return path


def run_grid(
    jobs: Sequence[Job],
    run: Callable[[Job], dict[str, Any]],
    *,
    out_dir: str,
    workers: int = 1,
    path_of: Callable[[str, Job], str] = run_path,
) -> list[Job]:
    """Run `run(job)` for every job without a saved JSON (`path_of(out_dir, job)`, default `out_dir/runs/<name>.json`),
    `workers` at a time, and save each result as it finishes (an interrupted grid resumes). `run` must be picklable
    (a module-level function, or a `functools.partial` of one): workers are spawned and import it. Returns the jobs
    that ran."""
    os.makedirs(os.path.join(out_dir, "runs"), exist_ok=True)
    todo = [job for job in jobs if not os.path.exists(path_of(out_dir, job))]
    if workers <= 1:
        threads = None
        for job in todo:
            import torch

            threads = threads or torch.get_num_threads()
            try:
                _run_and_save(run, job, path_of(out_dir, job))
            finally:
                torch.set_num_threads(threads)
            print(f"done {job.name}", flush=True)
        return todo
    import multiprocessing

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_run_and_save, run, job, path_of(out_dir, job)): job for job in todo}
        for future, job in futures.items():
            future.result()
            print(f"done {job.name}", flush=True)
    return todo


def load_runs(
    jobs: Sequence[Job], out_dir: str, missing_ok: bool = False, path_of: Callable[[str, Job], str] = run_path
) -> list[dict[str, Any]]:
    """The saved results of `jobs`, in their order (those not saved are left out with `missing_ok`)."""
    out = []
    for job in jobs:
        path = path_of(out_dir, job)
        if missing_ok and not os.path.exists(path):
            continue
        with open(path) as f:
            out.append(json.load(f))
    return out
