"""The benchmark runner: every (mode, case) is one ``spiral.api.run`` with its own run directory.

Layout of ``OUT``::

    bench.json                   what was run (suite, config, modes, seed, judge): resume checks it
    MODE/CASE_ID/                the case's run directory (config.yaml, attempts.jsonl, segments/ …)
    results/MODE/CASE_ID.json    the case's scored result, written atomically when it finishes
    results.json                 every case, per metric, per mode + bootstrap summary (rewritten as cases finish)
    summary.md, *.png            the report (spiral.bench.report)

Results are written by the driver only (workers return them), so local processes and Ray
workers need no shared results file. Each worker builds its agents once and reuses them for every case it runs
(``spiral.bench.workers``: one agent per kind and config, on the worker's own GPU); each case's result names
the backends, model ids and device that produced it. Resume skips cases whose result says ``ok``; a case whose
run was killed mid-way continues from its journal (``api.run(resume=...)``); failed cases run
again. A bad case never stops the others: its error is recorded in its result.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spiral import atomic
from spiral.bench.suite import Case, Suite, SuiteError, load_suite
from spiral.bench.workers import AgentCache

MODES = ("closed_loop", "plan_only", "single_shot")
_TIMING_KEYS = ("seconds", "seconds_per_video", "finished_at", "score_seconds")
_PLACE_KEYS = ("worker", "device")  # where a case ran: differs between local, process-pool and Ray runs


@dataclass
class BenchConfig:
    """Everything one benchmark invocation needs (saved as ``OUT/bench.json``)."""

    suite: str
    out: str
    modes: list[str] = field(default_factory=lambda: ["closed_loop"])
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    limit: int | None = None
    seed: int = 0
    judge: str = "recognizer"
    judge_options: dict[str, Any] = field(default_factory=dict)  # --judge-set: the VLM judge's options
    subject_features: str | None = None
    background_features: str | None = None
    features: dict[str, str] = field(default_factory=dict)  # METRIC -> spec (spiral.bench.features.FeaturesConfig)
    workers: int = 1
    ray: str | None = None
    gpus_per_worker: float = 0.0  # GPUs each Ray actor asks for (Ray hides the others from it)
    resume: bool = False

    def identity(self) -> dict[str, Any]:
        """The fields that must match for ``--resume`` to reuse earlier results."""
        out = {k: getattr(self, k) for k in ("suite", "config", "overrides", "seed", "judge", "subject_features",
                                             "background_features", "features")}
        return {**out, "judge_options": self.judge_options} if self.judge_options else out


def case_seed(seed: int, case_id: str) -> int:
    """The loop seed of a case: the same in every mode (paired comparison), independent across cases."""
    return int(np.random.SeedSequence([int(seed), zlib.crc32(case_id.encode())]).generate_state(1)[0] >> 1)


# ---- one case (runs in the driver, a spawned process or a Ray actor) --------------------------
_AGENTS: AgentCache | None = None  # this process's agents when it is a pool worker


def _init_worker(counter: Any = None) -> None:
    """Worker initializer: one torch thread (workers share the cores) and, in a process pool, the worker's
    number (from the shared ``counter``: worker i takes GPU i mod n) and the agents it keeps between cases."""
    global _AGENTS
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    if counter is not None:
        with counter.get_lock():
            index, counter.value = counter.value, counter.value + 1
        _AGENTS = AgentCache(worker=index)


def run_case(task: dict[str, Any], agents: AgentCache | None = None) -> dict[str, Any]:
    """Run (or resume) one case's loop with the worker's ``agents`` (this process's own when not given), then
    score its run directory with the judge; never raises."""
    global _AGENTS
    t0 = time.perf_counter()
    if agents is None:
        agents = _AGENTS = _AGENTS or AgentCache()
    case = task["case"]
    res: dict[str, Any] = {**_case_fields(case), "mode": task["mode"], "run_dir": task["run_rel"],
                           "seed": task["seed"], "status": "ok", "error": None, "stage": None}
    run_dir = Path(task["run_dir"])
    stage = "run"
    try:
        import spiral.api as api

        if (run_dir / "record.json").is_file():
            pass  # finished earlier (killed while scoring): score it again
        elif (run_dir / "meta.json").is_file():
            api.run(resume=run_dir, build=agents.agents)
        else:
            api.run(case["goal"], image=case.get("image"), scene=case.get("scene"), config=task.get("config"),
                    out=run_dir, seed=task["seed"], mode=task["mode"], overrides=task.get("overrides") or None,
                    build=agents.agents)
        from spiral.config import load_config

        res["agents"] = agents.describe(load_config(run_dir / "config.yaml"))
        res["device"] = res["agents"]["generator"].get("device")
        stage = "score"
        res.update(score(run_dir, task))
    except Exception as e:  # a failing case is recorded, the others still run
        res.update(status="error", stage=stage, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   traceback=traceback.format_exc(limit=-4))
    res["seconds"] = round(time.perf_counter() - t0, 4)
    res["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    res["worker"] = _worker()
    return res


def _worker() -> dict[str, Any]:
    """Where this case ran: host and process, plus the Ray node and task when a Ray worker ran it (to find the
    machine of a failing case on a cluster, and for tests to see that Ray really ran the cases)."""
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    ray = sys.modules.get("ray")  # imported in a Ray worker; never imported here just to ask
    if ray is not None and ray.is_initialized():
        ctx = ray.get_runtime_context()
        if ctx.worker.mode == ray.WORKER_MODE:
            out.update(ray_node=ctx.get_node_id(), ray_task=ctx.get_task_id())
    return out


def score(run_dir: Path, task: dict[str, Any]) -> dict[str, Any]:
    """Score one finished run directory with the task's judge and feature extractors."""
    from spiral.bench.features import make_extractors
    from spiral.bench.judge import make_judge
    from spiral.bench.metrics import score_run

    t = time.perf_counter()
    judge = make_judge(task["judge"], run_dir, task.get("judge_options"))
    specs = {**(task.get("features") or {}), **{k: task[f"{k}_features"] for k in ("subject", "background")
                                                 if task.get(f"{k}_features")}}
    ex = make_extractors(specs, judge)
    out = score_run(run_dir, judge, ex.subject, ex.background, motion=ex.motion, scorers=ex.scorers,
                    reference_plan=task["case"].get("reference_plan"))
    out["judge"] = getattr(judge, "name", task["judge"])
    if hasattr(judge, "identity"):
        out["judge_identity"] = judge.identity
    out["features"], out["vbench_comparable"] = ex.names(), ex.comparability()
    out["score_seconds"] = round(time.perf_counter() - t, 4)
    return out


def _case_fields(case: dict[str, Any]) -> dict[str, Any]:
    return {"case_id": case["id"], "length_class": case["length_class"], "n_steps": case["n_steps"],
            "tags": case.get("tags", []), "scene": case.get("scene"), "image": case.get("image")}


# ---- the driver ----------------------------------------------------------------------------------
class Bench:
    """One benchmark output folder: what to run, what is done, and the results written so far."""

    def __init__(self, cfg: BenchConfig):
        for m in cfg.modes:
            if m not in MODES:
                raise ValueError(f"unknown mode {m!r}; modes: {', '.join(MODES)}")
        if cfg.workers < 1:
            raise ValueError(f"--workers must be ≥ 1, got {cfg.workers}")
        if cfg.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must be ≥ 0, got {cfg.gpus_per_worker}")
        if cfg.ray and not cfg.gpus_per_worker:
            from spiral.bench.workers import cuda_backends
            from spiral.config import load_config

            cuda = cuda_backends(load_config(cfg.config, cfg.overrides))
            if cuda:
                raise ValueError(f"--ray: the {cuda[0]} runs on CUDA, but Ray shows a worker no GPU unless it asks "
                                 "for one; add --gpus-per-worker 1 (or a fraction, to share a GPU)")
        from spiral.bench.features import check_specs, features_config

        check_specs(features_config(cfg.features, cfg.subject_features, cfg.background_features))
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.results: dict[tuple[str, str], dict] = {}
        self.suite: Suite | None = None
        self.suite_error: str | None = None
        self.warnings: list[str] = []

    # -- bookkeeping
    def result_path(self, mode: str, case_id: str) -> Path:
        return self.out / "results" / mode / f"{case_id}.json"

    def _check_out(self) -> None:
        marker = self.out / "bench.json"
        if marker.is_file():
            old = json.loads(marker.read_text())
            if not self.cfg.resume:
                raise FileExistsError(f"{self.out} already holds a benchmark; add --resume to continue it "
                                      "or pick another --out")
            was = {"features": {}, **old.get("identity", {})}  # folders from before --features had none
            mismatch = {k: (was.get(k), v) for k, v in self.cfg.identity().items() if was.get(k) != v}
            if mismatch:
                k, (a, b) = next(iter(mismatch.items()))
                raise ValueError(f"--resume: {self.out} was run with {k}={a!r}, now {b!r}; "
                                 "resume with the same settings or pick another --out")
        atomic.write_json(marker, {"identity": self.cfg.identity(), "config": asdict(self.cfg),
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def load_done(self) -> None:
        """Read the per-case results already on disk (resume)."""
        for p in (self.out / "results").glob("*/*.json"):
            try:
                r = json.loads(p.read_text())
            except json.JSONDecodeError:
                continue
            self.results[(r["mode"], r["case_id"])] = r

    def tasks(self) -> list[dict[str, Any]]:
        """The (mode, case) pairs still to run, mode-major so every mode progresses case by case."""
        assert self.suite is not None
        cfg = self.cfg
        todo = []
        for mode in cfg.modes:
            for case in self.suite.cases:
                done = self.results.get((mode, case.id))
                if done is not None and done.get("status") == "ok":
                    continue
                todo.append(self._task(case, mode))
        return todo

    def _task(self, case: Case, mode: str) -> dict[str, Any]:
        cfg = self.cfg
        rel = f"{mode}/{case.id}"
        return {"case": case.to_dict(), "mode": mode, "run_dir": str(self.out / rel), "run_rel": rel,
                "seed": case_seed(cfg.seed, case.id), "config": cfg.config, "overrides": list(cfg.overrides),
                "judge": cfg.judge, "judge_options": dict(cfg.judge_options), "subject_features": cfg.subject_features,
                "background_features": cfg.background_features, "features": dict(cfg.features)}

    def record(self, res: dict[str, Any]) -> None:
        """Keep one finished case and write its result file atomically."""
        self.results[(res["mode"], res["case_id"])] = res
        atomic.write_json(self.result_path(res["mode"], res["case_id"]), res)

    # -- running
    def run(self, progress: bool = True, on_result: Callable[[dict], None] | None = None,
            rescore: bool = False) -> dict[str, Any]:
        """Run every pending case and write results.json (+ the report); returns the results object.
        ``rescore``: score every finished run directory again with the current metrics and judge (no case
        is generated again; an unfinished one is finished), e.g. after a metric was added."""
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self.suite = load_suite(self.cfg.suite).limit(self.cfg.limit)
            from spiral.bench.judge import check_judge_world

            check_judge_world(self.cfg.judge, str(self.suite.meta.get("world", "tabletop")), self.suite.name)
            if self.cfg.judge_options or self.cfg.judge in ("vlm", "transformers-vlm"):  # checked before any run
                from spiral.bench.judge import make_judge

                make_judge(self.cfg.judge, None, self.cfg.judge_options)
        except (SuiteError, ValueError) as e:
            self.suite_error = str(e)
            return self.write_results()
        self.warnings = self._judge_warnings()
        self._check_out()
        if self.cfg.resume and not rescore:
            self.load_done()
        tasks = self.tasks()
        with _Progress(len(tasks), progress) as bar:
            def done(res: dict) -> None:
                self.record(res)
                bar.advance(res)
                if on_result:
                    on_result(res)
                if bar.count % 10 == 0:
                    self.write_results()

            if self.cfg.ray:
                _run_ray(tasks, self.cfg, done)
            elif self.cfg.workers > 1:
                _run_pool(tasks, self.cfg, done)
            else:
                agents = AgentCache()
                for t in tasks:
                    done(run_case(t, agents))
        results = self.write_results()
        from spiral.bench.report import write_report

        write_report(self.out, results)
        return results

    def _judge_warnings(self) -> list[str]:
        """Warn (and record) when the VLM judge is the loop's critic model: then it is not independent."""
        if self.cfg.judge not in ("vlm", "transformers-vlm"):
            return []
        import logging

        from spiral.bench.judge_vlm import same_model_warning
        from spiral.config import load_config

        w = same_model_warning(self.cfg.judge_options, load_config(self.cfg.config, self.cfg.overrides).critic)
        if w:
            logging.getLogger("spiral.bench").warning(w)
        return [w] if w else []

    def write_results(self) -> dict[str, Any]:
        """Aggregate every case result into ``results.json`` (atomically)."""
        from spiral.bench.report import summarize

        suite = self.suite
        order = {c.id: i for i, c in enumerate(suite.cases)} if suite else {}
        selected = [r for r in self.results.values() if not suite or (r["case_id"] in order and
                                                                       r["mode"] in self.cfg.modes)]
        # a resume with a smaller --limit or fewer modes reports what it selected; other results stay on disk
        cases = sorted(selected, key=lambda r: (self.cfg.modes.index(r["mode"]) if r["mode"] in self.cfg.modes else 99,
                                                order.get(r["case_id"], 1 << 30)))
        invalid = [{"case_id": e.case_id, "index": e.index, "field": e.field, "error": e.message, "fix": e.fix,
                    "status": "invalid", "stage": "validate"} for e in (suite.errors if suite else [])]
        errors = [{"case_id": r["case_id"], "mode": r["mode"], "stage": r.get("stage"), "error": r.get("error")}
                  for r in cases if r.get("status") == "error"]
        if self.suite_error:
            errors.insert(0, {"case_id": None, "mode": None, "stage": "suite", "error": self.suite_error})
        results = {
            "bench": {**asdict(self.cfg), "suite_name": suite.name if suite else None,
                      "suite_version": suite.version if suite else None,
                      "n_cases": len(suite.cases) if suite else 0, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
                      "warnings": list(self.warnings)},
            "summary": summarize(cases, self.cfg.modes),
            "cases": cases,
            "invalid_cases": invalid,
            "errors": errors,
        }
        atomic.write_json(self.out / "results.json", results)
        return results


def _run_pool(tasks: list[dict], cfg: BenchConfig, done: Callable[[dict], None]) -> None:
    """Spread cases over local processes (spawn: no forked torch state); a dead worker fails only its cases.
    Each process numbers itself from a shared counter (its GPU) and keeps its agents between cases."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(ctx.Value("i", 0),)) as pool:
        futures = {pool.submit(run_case, t): t for t in tasks}
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as e:  # the worker process died (killed, out of memory)
                res = _crashed(futures[fut], e)
            done(res)


class _RayWorker:
    """A Ray actor running cases one at a time with the agents it keeps (made remote by :func:`_run_ray`)."""

    def __init__(self, index: int):
        self.agents = AgentCache(worker=index)

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        _init_worker()
        return run_case(task, self.agents)


def _run_ray(tasks: list[dict], cfg: BenchConfig, done: Callable[[dict], None]) -> None:
    """Spread cases over a Ray cluster (``--ray auto|ray://host:port``) or a local one (``--ray local``).

    ``--workers`` actors (by default as many as the cluster has CPUs, or GPUs over ``--gpus-per-worker``), each
    asking for one CPU and ``gpus_per_worker`` GPUs and keeping its agents; each runs one case at a time and gets
    the next when it returns one. An actor that dies fails its case and is replaced."""
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'spiral-video[ray]'") from None
    started = False
    if not ray.is_initialized():
        if cfg.ray == "local":
            ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=cfg.ray, log_to_driver=False)
        started = True
    try:
        actor = ray.remote(num_cpus=1, num_gpus=cfg.gpus_per_worker, max_restarts=0)(_RayWorker)
        actors = [actor.remote(i) for i in range(min(len(tasks), _ray_workers(ray, cfg)))]
        queue, running = list(tasks), {}

        def submit(i: int) -> None:
            if queue:
                t = queue.pop(0)
                running[actors[i].run.remote(t)] = (i, t)

        for i in range(len(actors)):
            submit(i)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            i, t = running.pop(ready[0])
            try:
                res = ray.get(ready[0])
            except Exception as e:  # the actor died: its case fails, a new actor takes its place
                res = _crashed(t, e)
                actors[i] = actor.remote(i)
            done(res)
            submit(i)
    finally:
        if started:
            ray.shutdown()


def _ray_workers(ray: Any, cfg: BenchConfig) -> int:
    """How many Ray actors: ``--workers`` when given, else what the cluster holds (its CPUs, or its GPUs over
    ``--gpus-per-worker``)."""
    if cfg.workers > 1:
        return cfg.workers
    have = ray.cluster_resources()
    n = have.get("GPU", 0) / cfg.gpus_per_worker if cfg.gpus_per_worker else have.get("CPU", 1)
    return max(1, int(n))


def _crashed(task: dict, e: BaseException) -> dict[str, Any]:
    return {**_case_fields(task["case"]), "mode": task["mode"], "run_dir": task["run_rel"], "seed": task["seed"],
            "status": "error", "stage": "worker", "error": f"worker died: {type(e).__name__}: {e}",
            "seconds": None, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


class _Progress:
    """Rich progress bar with ETA over the pending cases; silent when disabled."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.count, self.errors = total, enabled, 0, 0
        self._p = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
            self._p.__enter__()
            self._task = self._p.add_task("bench", total=self.total)
        return self

    def advance(self, res: dict) -> None:
        self.count += 1
        self.errors += res.get("status") != "ok"
        if self._p is not None:
            err = f", {self.errors} failed" if self.errors else ""
            self._p.update(self._task, advance=1, description=f"{res['mode']}/{res['case_id']}{err}")

    def __exit__(self, *exc: Any) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


def comparable(res: dict[str, Any]) -> dict[str, Any]:
    """A case result without its timings and its worker: what must be equal across local, process-pool and Ray runs.

    Floats are rounded to 6 decimals: workers run torch on one thread, the driver may not, and a
    different thread count changes the summation order of feature sums in the last bits.
    """
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _TIMING_KEYS + _PLACE_KEYS and k != "traceback"}
        if isinstance(x, list):
            return [strip(v) for v in x]
        if isinstance(x, float):
            return round(x, 6)
        return x

    return strip(res)


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Run a benchmark (see :class:`BenchConfig`) and return the results object."""
    return Bench(cfg).run(progress=progress)


def rescore_bench(out: str | Path, workers: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Score a finished benchmark folder again with the current metrics (its run directories are kept as
    they are); the settings come from its ``bench.json``."""
    marker = Path(out) / "bench.json"
    if not marker.is_file():
        raise FileNotFoundError(f"{out} holds no benchmark (no bench.json); run `spiral bench --out {out}` first")
    saved = json.loads(marker.read_text())["config"]
    cfg = BenchConfig(**{**saved, "out": str(out), "resume": True,
                         **({"workers": workers} if workers is not None else {})})
    return Bench(cfg).run(progress=progress, rescore=True)
