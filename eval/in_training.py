"""In-training evaluation (``--config.eval_every``): the callback the trainer calls every N steps.

The trainer never imports the evaluator; whoever composes them (``vlscale train``, the study) builds the callback
here and passes it to ``vlscale.train.run(..., evaluate=...)``. Building it checks the suite name, so a bad
``eval_suite`` fails before any step runs.
"""

from __future__ import annotations

from typing import Callable

from vlscale.errors import UserError

QUICK_SUITE = "synth-quick"
QUICK_EVAL_EXAMPLES = 256


def quick_eval_tasks(suite: str) -> list[dict]:
    """``synth-quick``: colour and shape zero-shot on a few hundred images; any other name is an eval suite."""
    if suite == QUICK_SUITE:
        return [{"task": "zeroshot", "dataset": f"synth:{t}", "num_examples": QUICK_EVAL_EXAMPLES}
                for t in ("colour", "shape")]
    from vlscale.eval.suites import suite_tasks

    return suite_tasks(suite)


def eval_batch(mesh) -> int:
    """A batch that the mesh's batch axes divide, near 64."""
    n = int(mesh.shape["data"]) * int(mesh.shape["fsdp"])
    return max(n, 64 // n * n)


def evaluator(config) -> Callable | None:
    """The callback a training config asks for (``eval_every`` > 0), or None. It takes the parameters (per-block
    layout, host arrays), ``step``, ``samples``, the trainer's ``mesh`` and the run's ``workdir``, and returns
    ``{"<dataset>/<metric>": value}``; its files go to ``WORKDIR/eval_in_training/step_N``. It computes at the
    evaluator's default precision, "auto" (bf16 on GPU/TPU, float32 on CPU; ``encoders.resolve_dtype``)."""
    if not int(config.eval_every):
        return None
    suite = str(config.eval_suite)
    try:
        tasks = quick_eval_tasks(suite)
    except UserError as e:
        raise UserError(f"--config.eval_suite={suite!r}: {e}") from None
    model_name = str(config.model)

    def evaluate(params, *, step: int, samples: int, mesh, workdir) -> dict[str, float]:
        from pathlib import Path

        from vlscale.eval.runner import evaluate_checkpoint
        from vlscale.models.checkpoints import Checkpoint

        ckpt = Checkpoint(model_name=model_name, params=params, path=str(workdir), step=step, samples_seen=samples)
        out_dir = Path(workdir) / "eval_in_training" / f"step_{step}"
        records = evaluate_checkpoint(ckpt, tasks, out_dir=out_dir, results=None, mesh=mesh,
                                      batch_size=eval_batch(mesh), log=lambda m: None)
        return {f"{r['dataset']}/{k}": float(v) for r in records for k, v in r["metrics"].items()
                if isinstance(v, (int, float))}

    return evaluate
