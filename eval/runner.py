"""Evaluate checkpoints: ``evaluate_checkpoint`` (one checkpoint, a list of tasks) and ``evaluate_run`` (the
checkpoints of a training run that the paper's protocol uses and that have no rows yet).

Protocol (Nezhurina et al. 2025): a ``cosine`` or ``const-cooldown`` run is scored at its final checkpoint; a
``const`` run at every kept checkpoint past warm-up (each one is a point on the compute axis).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from vlscale.errors import UserError
from vlscale.runtime.paths import resolve

TASKS = ("zeroshot", "retrieval", "generative")
DEFAULT_BATCH = 256
# The metrics each task writes (zeroshot.TOPK, retrieval.RECALL_K; tests/eval/test_nonfinite.py checks they agree
# with what an evaluation returns). A study checks its fit benchmarks against them before anything runs.
TASK_METRICS = {
    "zeroshot": ("acc1", "acc5", "mean_per_class_recall"),
    "retrieval": tuple(f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)),
    "generative": ("generative_acc1", "generative_acc5", "generative_mean_acc1"),
}


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation: a task on a dataset spec, with the dataset's options."""

    task: str
    dataset: str
    name: str | None = None
    classnames: str | None = None  # file
    templates: str | None = None  # file
    data_dir: str | None = None
    split: str | None = None
    num_examples: int | None = None
    seed: int = 0
    optional: bool = False  # skip (with a note) when the dataset is not there, e.g. ImageNet shifts

    def __post_init__(self):
        if self.task not in TASKS:
            raise UserError(f"--task {self.task!r}: choose one of {', '.join(TASKS)}")

    @property
    def downstream_dataset(self) -> str:
        from vlscale.eval.datasets import dataset_name

        return dataset_name(self.dataset, self.name)


def check_task(spec: TaskSpec) -> None:
    """What can be checked of a task without opening its data: the spec's kind and, for synth:, the set and that it
    suits the task (one line naming the spec)."""
    from vlscale.data.synth_tasks import ZEROSHOT_TASKS as SYNTH_TASKS
    from vlscale.eval.datasets import KINDS

    kind, sep, body = spec.dataset.partition(":")
    if not sep or kind not in KINDS or not body:
        raise UserError(f"dataset spec {spec.dataset!r}: write one of synth:<task>, folder:DIR, tfds:NAME[:split], "
                        "wds:SHARDS, karpathy:JSON:IMAGEDIR")
    if kind == "synth":
        known = SYNTH_TASKS + ("retrieval",)
        if body not in known:
            raise UserError(f"unknown synthetic dataset {spec.dataset}; choose one of "
                            f"{', '.join('synth:' + t for t in known)}")
        if (body == "retrieval") != (spec.task == "retrieval"):
            raise UserError(f"{spec.task} on {spec.dataset}: synth:retrieval is for the retrieval task, "
                            f"synth:{'|'.join(SYNTH_TASKS)} for zeroshot and generative")
    if spec.num_examples is not None and int(spec.num_examples) < 1:
        raise UserError(f"{spec.task} on {spec.dataset}: num_examples {spec.num_examples} must be at least 1")


def as_task(t: Any) -> TaskSpec:
    if isinstance(t, TaskSpec):
        return t
    if isinstance(t, (tuple, list)):
        if len(t) == 2:
            return TaskSpec(t[0], t[1])
        if len(t) == 3 and isinstance(t[2], Mapping):
            return TaskSpec(t[0], t[1], **dict(t[2]))
    if isinstance(t, Mapping):
        return TaskSpec(**{k: v for k, v in dict(t).items()})
    raise UserError(f"task {t!r}: give (task, dataset) like ('zeroshot', 'synth:colour')")


@dataclass
class _Classifiers:
    """Class embeddings computed once per checkpoint (ImageNet and its shifts share one classifier)."""

    cache: dict = field(default_factory=dict)

    def get(self, em, prompts, batch_size):
        from vlscale.eval import zeroshot

        key = (prompts.classnames, prompts.templates)
        if key not in self.cache:
            self.cache[key] = self._columns_of_cached(key)
        if self.cache[key] is None:
            self.cache[key] = zeroshot.build_classifier(em, prompts, batch_size)
        return self.cache[key]

    def _columns_of_cached(self, key):
        """A classifier whose classes are all in one already built with the same templates (ImageNet-A/-R after
        ImageNet-1k): its columns, since each class's embedding depends on that class's prompts only."""
        names, templates = key
        for (have, tpl), weights in self.cache.items():
            if tpl == templates and weights is not None and set(names) <= set(have):
                col = {n: i for i, n in enumerate(have)}
                return weights[:, [col[n] for n in names]]
        return None


# Eval functions compile in a few tenths of a second each: below the trainer's threshold for persisting them.
EVAL_MIN_COMPILE_S = 0.1


def use_compilation_cache() -> str | None:
    """The trainer's persistent compilation cache (``$VLSCALE_COMPILATION_CACHE``, else the user cache dir; ``none``
    disables it), set up unless this process already has one, and lowered to keep the eval functions too, so a new
    process evaluating a model already seen skips their compilation. Returns the folder in use (None: off)."""
    from vlscale.runtime import compilation_cache

    path = compilation_cache.enable(None, min_compile_time_s=EVAL_MIN_COMPILE_S)
    return str(path) if path else None


def _synth_knobs(ckpt) -> dict | None:
    try:
        return dict(ckpt.run["config"]["data"]["synth"]["knobs"])
    except (TypeError, KeyError):
        return None


def _json_path(out_dir: Path, task: str, name: str) -> Path:
    return out_dir / f"{task}_{name.replace('/', '_')}.json"


def _write_json(path: Path, obj: dict) -> None:
    import json

    from vlscale.runtime.files import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def default_out_dir(ckpt) -> Path:
    if ckpt.workdir is not None:
        return resolve(ckpt.workdir) / "eval" / f"step_{ckpt.step}"
    return resolve(ckpt.path) / "eval"


def evaluate_checkpoint(checkpoint, tasks: Iterable, *, out_dir=None, results=None, batch_size: int = DEFAULT_BATCH,
                        identity: Mapping | None = None, dtype: str = "auto", mesh=None,
                        generative_batch_size: int | None = None, log=None) -> list[dict]:
    """Evaluates one checkpoint on ``tasks`` ((task, dataset spec) pairs or ``TaskSpec``s).

    Returns one record per task (``{"dataset", "model", "task", "metrics", ...}``), writes each as
    ``OUT/<task>_<name>.json`` and appends rows to ``results`` (default ``WORKDIR/results.csv``) when the identity is
    known: from run.json, or ``identity`` = {pretrain_dataset, lr_scheduler, samples_seen} for a converted checkpoint.
    ``dtype``: "auto" (bf16 on GPU/TPU, float32 on CPU), "float32"/"fp32" or "bfloat16"/"bf16"; each record's
    ``precision`` is the one used.
    """
    import jax

    from vlscale.eval import datasets, generative, prompts as prompts_lib, retrieval, zeroshot
    from vlscale.models import checkpoints
    from vlscale.eval import results as results_lib
    from vlscale.eval.batches import check_batch_size
    from vlscale.eval.encoders import EvalModel
    from vlscale.eval.nonfinite import NonFiniteScores

    log = log or (lambda msg: print(msg, file=sys.stderr))
    specs = [as_task(t) for t in tasks]
    if not specs:
        raise UserError("no tasks to evaluate")
    ckpt = checkpoint if isinstance(checkpoint, checkpoints.Checkpoint) else checkpoints.load(checkpoint)
    use_compilation_cache()
    em = EvalModel.create(ckpt.model_name, ckpt.params, mesh=mesh, dtype=dtype)
    check_batch_size(batch_size, em.mesh)
    gen_batch = generative_batch_size or min(batch_size, generative.GENERATIVE_BATCH)
    if any(s.task == "generative" for s in specs):
        generative.require_generative(em)
        check_batch_size(gen_batch, em.mesh)
    ident = results_lib.checkpoint_identity(ckpt, identity)
    if results is None and ckpt.workdir is not None:
        results = resolve(ckpt.workdir) / "results.csv"
    out_dir = resolve(out_dir) if out_dir is not None else default_out_dir(ckpt)
    classifiers = _Classifiers()
    records = []
    for spec in specs:
        try:
            ds = datasets.open_dataset(spec.dataset, spec.task, name=spec.name,
                                       classnames=_classnames(spec), data_dir=spec.data_dir, split=spec.split,
                                       num_examples=spec.num_examples, seed=spec.seed, synth_knobs=_synth_knobs(ckpt))
        except UserError as e:
            if spec.optional:
                log(f"skipped {spec.task} {spec.dataset}: {e}")
                continue
            raise
        try:
            if spec.task == "retrieval":
                res = retrieval.evaluate(em, ds, batch_size)
            else:
                prompts = prompts_lib.user_prompts(ds.prompts, spec.classnames, spec.templates)
                prompts_lib.check_matching(prompts, ds.num_classes,
                                           int(ds.labels.max()) if ds.labels is not None else None)
                if spec.task == "zeroshot":
                    res = zeroshot.evaluate(em, ds, prompts, batch_size,
                                            classifier=classifiers.get(em, prompts, batch_size))
                else:
                    res = generative.evaluate(em, ds, prompts, gen_batch)
        except NonFiniteScores as e:
            raise NonFiniteScores(f"checkpoint {ckpt.path}: {spec.task} on {ds.name} stopped, no row written: {e} "
                                  "(are its weights finite?)") from None
        record = {"dataset": ds.name, "model": ckpt.model_name, "task": spec.task, "metrics": res["metrics"],
                  **{k: v for k, v in res.items() if k != "metrics"}, "spec": spec.dataset, "checkpoint": ckpt.path,
                  "step": ckpt.step, "samples_seen": ckpt.samples_seen, "precision": em.dtype}
        path = _json_path(out_dir, spec.task, ds.name)
        writes = jax.process_index() == 0  # every process computes the same metrics; the first one writes them
        if writes:
            _write_json(path, record)
        record["json"] = str(path)
        if ident is not None and results is not None:
            rows = results_lib.rows_for(ident, ds.name, res["metrics"])
            record["rows_added"] = results_lib.append_rows(results, rows) if writes else 0
            record["results"] = str(results)
        records.append(record)
    if ident is None:
        log("no rows written to a results table: the checkpoint has no run.json; pass --pretrain-dataset, "
            "--lr-scheduler and --samples-seen to name the run it comes from")
    return records


def _classnames(spec: TaskSpec) -> list[str] | None:
    if not spec.classnames:
        return None
    from vlscale.eval.prompts import read_classnames

    return read_classnames(spec.classnames)[0]


def protocol_checkpoints(workdir, run: dict, all_checkpoints: bool = False) -> list:
    """The checkpoints the paper's protocol scores, oldest first."""
    from vlscale.models import checkpoints

    entries = checkpoints.list_checkpoints(workdir)
    if all_checkpoints:
        return entries
    schedule = run.get("lr_scheduler")
    if schedule == "const":
        warmup = int(run.get("warmup") or 0)
        return [e for e in entries if e.step > warmup]
    final = checkpoints.final_step(workdir)
    return [e for e in entries if e.step == final]


def evaluate_run(workdir, suite: str = "synth", *, results=None, all_checkpoints: bool = False,
                 batch_size: int = DEFAULT_BATCH, dtype: str = "auto", mesh=None, out_dir=None,
                 log=None) -> list[dict]:
    """Evaluates the checkpoints of a run the protocol needs and that have no rows yet (idempotent).

    ``suite``: a suite name or a list of tasks. JSON files go to ``out_dir/step_N`` (default WORKDIR/eval/step_N).
    """
    from vlscale.models import checkpoints
    from vlscale.eval import results as results_lib
    from vlscale.eval.suites import suite_tasks

    log = log or (lambda msg: print(msg, file=sys.stderr))
    workdir = resolve(workdir)
    run = checkpoints.read_json(workdir / checkpoints.RUN_JSON)
    if run is None:
        raise UserError(f"{workdir}: no run.json; evaluate_run needs a training workdir")
    tasks = suite_tasks(suite) if isinstance(suite, str) else [as_task(t) for t in suite]
    results = resolve(results) if results is not None else workdir / "results.csv"
    records = []
    for entry in protocol_checkpoints(workdir, run, all_checkpoints):
        todo = [t for t in tasks
                if not results_lib.has_rows(results, run.get("run", ""), entry.step, t.downstream_dataset)]
        if not todo:
            continue
        ckpt = checkpoints._load_step(workdir, entry)
        if ckpt.samples_seen is not None and ckpt.samples_seen <= 0:
            log(f"skipped step {entry.step}: it has seen no samples")
            continue
        out = resolve(out_dir) / f"step_{entry.step}" if out_dir is not None else None
        records += evaluate_checkpoint(ckpt, todo, out_dir=out, results=results, batch_size=batch_size, dtype=dtype,
                                       mesh=mesh, log=log)
    return records
