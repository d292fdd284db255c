"""``run(config, workdir)``: train or resume one run, the paper's recipe, on any mesh, surviving preemption.

The loop is the edge around the pure step: it restores or initialises the state, feeds global batches, logs,
checkpoints (async, Orbax), and stops cleanly. Re-running the same call continues from the latest complete
checkpoint; a finished run returns its ``final.json`` and changes nothing.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

from vlscale.runtime import files, paths, signals
from vlscale.errors import UserError

FINAL_JSON = "final.json"
DEFAULT_WARMUP_FRACTION = 0.05  # warmup = -1: this fraction of the run
METRICS_JSONL = "metrics.jsonl"
TRAIN_MIN_COMPILE_S = 0.5  # programs compiled faster than this are not written to the persistent cache


class NonFiniteError(UserError):
    pass


# In-training evaluation (``eval_every``) is a callback the composer passes in (``vlscale.eval.in_training``): it gets
# the parameters in the per-block layout as host arrays, and returns metric values keyed "<dataset>/<metric>".
Evaluator = Callable[..., "dict[str, float]"]


def resolve_config(config):
    """A copy with the data pipeline tied to the run (global batch, the model's image size and context, the seed)
    and the runtime fields left at "auto" filled for the model and platform (``configs.train.resolve_runtime``;
    the names filled are listed in ``auto_fields``, which run.json and ``--dry-run`` show)."""
    import jax

    from vlscale.configs import train as train_config
    from vlscale.models.config import get_config

    config = config.copy_and_resolve_references()
    model = get_config(config.model)
    filled = train_config.resolve_runtime(config, jax.default_backend())
    with config.unlocked():
        if filled or "auto_fields" not in config:
            config.auto_fields = ",".join(filled)
        config.data.batch_size = int(config.global_batch_size)
        config.data.image_size = int(model.image_size)
        config.data.context_length = int(model.context_length)
        config.data.train = True
        if config.data.seed is None:
            config.data.seed = int(config.seed)
        if int(config.warmup) == -1:
            steps = math.ceil(int(config.total_samples) / max(int(config.global_batch_size), 1))
            config.warmup = max(1, round(DEFAULT_WARMUP_FRACTION * steps))
        if not config.pretrain_dataset:
            config.pretrain_dataset = str(config.data.source)
    return config


def mesh_devices(mesh_config) -> list:
    import jax

    n = int(mesh_config.get("devices", 0))
    return jax.devices()[:n] if n else jax.devices()


def run(config, workdir, *, steps: int | None = None, progress: bool | None = None,
        evaluate: Evaluator | None = None) -> dict[str, Any]:
    """Trains (or resumes) the run in ``workdir``; returns final.json's content, or {"finished": False, ...}
    when ``steps`` (a cap on the step reached in this call) stopped it first."""
    import jax

    from vlscale.train import run_info, validate

    config = resolve_config(config)
    # Orbax wants absolute paths; remote paths (gs://...) go through etils.epath as they are.
    workdir = paths.resolve(workdir)
    workdir = workdir.absolute() if paths.is_local(workdir) else workdir  # Orbax wants absolute paths
    validate.check_config(config, device_count=jax.device_count(), process_count=jax.process_count())
    if int(config.eval_every) and evaluate is None:
        raise UserError(f"--config.eval_every={config.eval_every}: in-training evaluation needs an evaluator; pass "
                        "evaluate=vlscale.eval.in_training.evaluator(config) (the CLI and the study do)")
    if steps is not None and steps < 1:
        raise UserError(f"--steps {steps}: must be at least 1")
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"--workdir {workdir}: exists and is not a directory")
    saved = run_info.check_resume(workdir, config)
    final_path = workdir / FINAL_JSON
    if saved is not None and final_path.exists():
        import json

        final = json.loads(final_path.read_text())
        if jax.process_index() == 0:
            print(f"vlscale train: {saved.get('run')} already finished at step {final['step']} "
                  f"({final['samples_seen']:,} samples); nothing to do ({workdir})", flush=True)
        return final
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--workdir {workdir}: cannot create it ({e.strerror})")
    if isinstance(workdir, Path) and not os.access(workdir, os.W_OK):
        raise UserError(f"--workdir {workdir}: not writable")
    from vlscale.runtime import compilation_cache

    compilation_cache.enable(str(config.compilation_cache), min_compile_time_s=TRAIN_MIN_COMPILE_S)
    # One writer per workdir (the hosts of one multi-host run are one writer: process 0 holds the lock).
    import contextlib

    from vlscale.runtime import locks

    lock = locks.exclusive(workdir, flag="--workdir", command="vlscale train") if jax.process_index() == 0 \
        else contextlib.nullcontext()
    # Several processes: a stop asked for while the run starts (restoring, compiling) is held until the hosts' first
    # agreement step, where all of them save the same step; one process stops at once, as before.
    held = signals.stop_on_signals(raise_on_signal=False) if jax.process_count() > 1 else contextlib.nullcontext()
    with held as held_stop, lock:
        trainer = _Trainer(config, workdir, saved, steps, progress, evaluate)
        trainer.held_stop = held_stop
        final = trainer.run()
    if held_stop is not None:
        held_stop.raise_if_requested()  # came after the loop: the run is complete, the signal still ends it
    return final


class _Trainer:
    held_stop: signals.StopFlag | None = None  # several processes: a signal heard before the loop (see run)

    def __init__(self, config, workdir: Path, saved: dict | None, steps: int | None, progress: bool | None,
                 evaluate: Evaluator | None = None):
        import jax

        from vlscale.data.iterator import make_iterator
        from vlscale.train import budgets, metrics, step as step_lib, validate
        from vlscale.runtime import checkpoint
        from vlscale.runtime import sharding

        self.config, self.workdir, self.saved = config, workdir, saved
        self.evaluate = evaluate
        self._logged: set[str] = set()
        self.is_main = jax.process_index() == 0
        m = config.mesh
        try:
            self.mesh = sharding.make_mesh(int(m.data), int(m.fsdp), int(m.tensor), devices=mesh_devices(m))
        except ValueError as e:
            raise UserError(f"--config.mesh: {e}")
        self.data = make_iterator(config.data)
        sample_dtype = str(config.data.get("image_dtype", "float32"))
        self.trainer = step_lib.get_train_step(config, self.mesh, image_dtype=sample_dtype)
        self.gbs = int(config.global_batch_size)
        self.total_steps = validate.total_steps(config)
        self.milestone_steps = budgets.milestone_steps(config.checkpoint_at_samples, self.gbs)
        self.mngr = checkpoint.manager(workdir, keep=int(config.keep_checkpoints),
                                       milestone_steps=self.milestone_steps)
        if self.is_main:
            for path in checkpoint.foreign_entries(workdir):
                print(f"vlscale train: warning: {path} was not written by vlscale (no Orbax step metadata, or a "
                      "symbolic link); left alone", flush=True)
        self.metrics = metrics.MetricsLog(workdir / METRICS_JSONL, enabled=self.is_main)
        self.tb = metrics.TensorBoard(workdir / "tb", enabled=self.is_main)
        self.step_cap = steps
        self.progress_enabled = self.is_main if progress is None else (progress and self.is_main)
        self.peak = metrics.peak_flops(jax.devices()[0].device_kind)
        from vlscale.models import flops

        self.train_flops_per_sample = flops.training_flops(config.model)
        self.fingerprint = None
        fp = getattr(self.data, "fingerprint", None)
        if callable(fp):
            self.fingerprint = fp()
        from vlscale.train import preemption

        self.stopper = preemption.StopAgreement(int(config.stop_check_every))

    # --- state ------------------------------------------------------------------------------------------------

    def _restore_or_init(self):
        abstract = self.trainer.abstract_state_with_shardings()
        restored = self._restore_newest_good(abstract)
        if restored is not None:
            state, meta = restored
            self.metrics.truncate_after(int(meta["step"]))
            self.tb.purge_after(int(meta["step"]))
            return state, meta, "resumed"
        if self.config.init_from:
            state, meta, how = self._init_from(abstract)
        else:
            state, meta, how = self.trainer.init(int(self.config.seed)), {"step": 0, "samples_seen": 0}, "new"
        # A previous attempt killed before its first checkpoint left lines this run will write again.
        self.metrics.truncate_after(int(meta["step"]))
        self.tb.purge_after(int(meta["step"]))
        return state, meta, how

    def _restore_newest_good(self, abstract):
        """(state, meta) of the newest checkpoint that verifies, saying which ones were skipped and why; None
        when the run has none; a one-line error when it has some and none verifies."""
        from vlscale.runtime import checkpoint

        steps = sorted(self.mngr.all_steps(), reverse=True)
        failures = []
        for step in steps:
            try:
                state, meta = checkpoint.restore(self.mngr, step, abstract, self.data)
            except checkpoint.CheckpointError as e:
                failures.append(step)
                if self.is_main:
                    print(f"vlscale train: warning: {e}", flush=True)
                continue
            if failures:
                # Set aside (never deleted: kept for inspection) so that this run can save those steps again.
                moved = [checkpoint.set_aside(self.mngr, s) for s in failures] if self.is_main else []
                import jax

                if jax.process_count() > 1:  # every host lists the steps again only after process 0 moved them
                    from jax.experimental import multihost_utils

                    multihost_utils.sync_global_devices("vlscale: damaged checkpoints set aside")
                self.mngr.reload()
                if self.is_main:
                    print(f"vlscale train: resuming from {self.mngr.directory / str(step)}, the newest checkpoint "
                          f"that verifies; the newer one{'s' if len(moved) > 1 else ''} moved to "
                          f"{', '.join(moved)}", flush=True)
            return state, meta
        if failures:
            raise UserError(f"no checkpoint in {self.mngr.directory} verifies (the reasons are above); move the "
                            "damaged ones aside to start this run again from scratch")
        return None

    def _init_from(self, abstract):
        from vlscale.runtime import checkpoint

        src = str(self.config.init_from)
        try:
            src_workdir, step_dir = checkpoint.resolve_step_dir(src)
        except UserError as e:
            raise UserError(f"--config.init_from: {e}")
        meta = checkpoint.read_meta(step_dir)
        if meta.get("model") != self.config.model:
            raise UserError(f"--config.init_from={src}: a checkpoint of {meta.get('model')}, not {self.config.model}")
        step = int(meta["step"])
        cool_start = self.total_steps - _cooldown(self.config, self.total_steps)
        if step > cool_start:
            raise UserError(f"--config.init_from={src}: step {step} is past the start of this run's cooldown "
                            f"(step {cool_start} of {self.total_steps}); raise total_samples or cooldown_steps")
        src_mngr = checkpoint.manager(src_workdir, keep=1 << 30, read_only=True)
        state, meta = checkpoint.restore(src_mngr, step, abstract, self.data)
        src_mngr.close()
        return state, meta, f"initialised from {step_dir}"

    # --- loop -------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """``_run``, with a full, read-only or vanished disk said in one line naming the last good checkpoint."""
        try:
            return self._run()
        except UserError:
            raise
        except Exception as e:
            from vlscale.runtime import disk_errors

            message = disk_errors.disk_error_message(e, self.workdir)
            if message is None:
                raise
            raise UserError(f"{message}; {self._last_good_text()}") from e

    def _last_good_text(self) -> str:
        from vlscale.runtime import checkpoint

        try:
            self.mngr.reload()
            latest = self.mngr.latest_step()
        except Exception:  # noqa: BLE001 - the disk is failing: say what we can
            latest = None
        if latest is None:  # Orbax lists only committed steps: a save cut short by the disk is not among them
            return "no checkpoint was saved"
        return f"the last good checkpoint is {self.workdir / checkpoint.CHECKPOINTS / str(latest)}"

    def _run(self) -> dict[str, Any]:
        import jax

        from vlscale.train import optim
        from vlscale.runtime import checkpoint

        state, meta, how = self._restore_or_init()
        step = int(meta["step"])
        samples = int(meta["samples_seen"])
        # A resume with another global batch size (allow_config_change) keeps the samples already seen, and the
        # learning rate continues the same curve over samples seen (optim's module docstring).
        target = step + max(math.ceil((int(self.config.total_samples) - samples) / self.gbs), 0)
        self.total_steps = target
        unit = self._schedule_batch_size(how)
        if unit == self.gbs and samples == step * self.gbs:
            sched = optim.schedule_params(self.config, target)
        else:
            sched = optim.schedule_params(self.config, math.ceil(int(self.config.total_samples) / unit),
                                          resume_step=step, resume_samples=samples, schedule_batch_size=unit)
        run_json = self._write_run_json(how, schedule_batch_size=unit)
        stop_at = target if self.step_cap is None else min(target, self.step_cap)
        if self.is_main:
            print(f"vlscale train: {run_json['run']} — {how} at step {step}/{target} "
                  f"({samples:,} of {int(self.config.total_samples):,} samples); workdir {self.workdir}", flush=True)
        from vlscale.runtime.progress import Progress

        progress = Progress(target, initial=step, unit="step", enabled=self.progress_enabled)
        t_start = time.perf_counter()
        t_last, step_last, wait_last = time.perf_counter(), step, self.data.wait_s
        compile_s = None  # the session's first step: compilation (or a cache load) plus one step
        log_every, ckpt_every = int(self.config.log_every), int(self.config.checkpoint_every)
        # SIGTERM (a preemption notice) or SIGINT: finish the step, save, then raise StopRequested (exit 143/130).
        # Several processes stop together at their next agreement step (train/preemption.py): no per-step barrier.
        with signals.stop_on_signals(raise_on_signal=False, heard_before=self.held_stop) as stop:
            while step < stop_at:
                try:
                    host = next(self.data)
                except UserError:  # the bad-sample guard: keep what was trained, then stop with its message
                    self._save(state, step, samples)
                    self.mngr.wait_until_finished()
                    raise
                except StopIteration:  # finite data the preflight let through ran out (skipped bad samples)
                    host = None
                ran_out = int(host is None)
                # Finite per-host streams on several hosts: all agree each step (a collective) whether every host
                # has a batch, so none waits in a step that a host without data never joins. The global sample
                # order needs no agreement: every host's share holds the same number of full global batches.
                if jax.process_count() > 1 and self.config.data.get("num_epochs", None) is not None \
                        and not getattr(self.data, "global_order", False):
                    import numpy as np

                    from vlscale.data import hosts

                    ran_out = int(hosts.allgather_sum(np.asarray([ran_out], np.int64))[0])
                if ran_out:
                    raise self._data_ended(state, step, samples, target, ran_out)
                batch = {k: jax.make_array_from_process_local_data(self.trainer.batch_shardings[k], host[k])
                         for k in ("image", "text")}
                state, out = self.trainer.step(state, batch, sched)
                step += 1
                samples += self.gbs
                if compile_s is None:  # time the compiling step apart: rates and ETAs measure training only
                    jax.block_until_ready(out)
                    now = time.perf_counter()
                    compile_s = now - t_last
                    t_last, step_last, wait_last = now, step, self.data.wait_s
                log_now = step % log_every == 0 or step == target
                save_now = step % ckpt_every == 0 or step in self.milestone_steps or step == target
                if log_now or save_now:
                    self._check_finite(state, step)
                if log_now:
                    now = time.perf_counter()
                    n = step - step_last
                    dt = (now - t_last) / n if n else compile_s  # logged at the session's first step
                    wait = (self.data.wait_s - wait_last) / max(n, 1)
                    record = self._record(step, samples, out, dt, wait)
                    if compile_s is not None and "compile_s" not in self._logged:
                        record["compile_s"] = compile_s
                        self._logged.add("compile_s")
                    self.metrics.write(record)
                    self.tb.write(step, record)
                    progress.update(step, **{"samples": f"{samples:,}", "loss": f"{record['loss']:.4f}",
                                             "samples/s": f"{record['samples_per_s']:,.0f}" if n else None})
                    t_last, step_last, wait_last = now, step, self.data.wait_s
                    self._check_data(state, step, samples)
                if self.evaluate is not None and int(self.config.eval_every) and step % int(self.config.eval_every) == 0:
                    self._quick_eval(state, step, samples)
                if save_now:
                    self._save(state, step, samples)
                if self.stopper.should_stop(stop.requested, step, synced=log_now or save_now):
                    self._save(state, step, samples)
                    self.mngr.wait_until_finished()
                    self._update_run_json(run_json, time.perf_counter() - t_start)
                    progress.close()
                    if self.is_main:
                        print(f"vlscale train: stopped at step {step}; checkpoint {self.workdir / 'checkpoints' / str(step)} "
                              "saved, re-run the same command to continue", flush=True)
                    stop.raise_if_requested()
                    raise signals.StopRequested(signal.SIGTERM)  # another host was told to stop
        self.mngr.wait_until_finished()
        progress.close()
        self._update_run_json(run_json, time.perf_counter() - t_start)
        self.tb.close()
        if step < target:
            if self.mngr.latest_step() != step:
                self._save(state, step, samples)
                self.mngr.wait_until_finished()
            return {"finished": False, "step": step, "samples_seen": samples, "workdir": str(self.workdir)}
        final = {"step": step, "samples_seen": samples, "loss": self._last_loss(),
                 "params_sha256": checkpoint.sha256_of_params(state.params)}
        if self.is_main:
            files.atomic_write_json(self.workdir / FINAL_JSON, final)
            print(f"vlscale train: finished {run_json['run']}: loss {final['loss']:.4f} after {samples:,} samples; "
                  f"metrics {self.workdir / METRICS_JSONL}, checkpoints {self.workdir / 'checkpoints'}", flush=True)
        self.mngr.close()
        self.data.close()
        return final

    # --- helpers ----------------------------------------------------------------------------------------------

    def _record(self, step, samples, out, step_time, wait) -> dict[str, Any]:
        import jax

        values = jax.device_get(out)
        record: dict[str, Any] = {"step": step, "samples_seen": samples}
        for k in ("loss", "contrastive_loss", "caption_loss", "lr", "grad_norm", "logit_scale"):
            if k in values:
                record[k] = float(values[k])
        record["step_time_s"] = step_time
        record["data_wait_s"] = wait
        record["samples_per_s"] = self.gbs / step_time if step_time > 0 else float("nan")
        tflops = self.train_flops_per_sample * record["samples_per_s"] / jax.device_count() / 1e12
        record["tflops_per_device"] = tflops
        if self.peak:
            record["mfu"] = tflops * 1e12 / self.peak
        data_metrics = getattr(self.data, "metrics", None)
        if callable(data_metrics):
            dm = data_metrics()
            for k in ("data/bad_samples", "data/bad_fraction"):
                if k in dm:
                    record[k.replace("/", "_")] = float(dm[k])
        skipped = int(jax.device_get(self._last_state_skipped)) if hasattr(self, "_last_state_skipped") else 0
        if self.config.skip_nonfinite:
            record["nonfinite_skipped"] = skipped
        self._last_loss_value = record["loss"]
        return record

    def _last_loss(self) -> float:
        if hasattr(self, "_last_loss_value"):
            return self._last_loss_value
        recs = [r for r in self.metrics.read() if "loss" in r]
        return float(recs[-1]["loss"]) if recs else float("nan")

    def _quick_eval(self, state, step: int, samples: int) -> None:
        """The in-training zero-shot check (``eval_every``): a small suite, logged as its own metrics line."""
        import jax
        from jax.experimental import multihost_utils

        from vlscale.models import layer_layout

        params = state.params if jax.process_count() == 1 else multihost_utils.process_allgather(state.params,
                                                                                                   tiled=True)
        params = layer_layout.to_layout(jax.device_get(params), str(self.config.model), scan_layers=False)
        values = self.evaluate(params, step=step, samples=samples, mesh=self.mesh, workdir=self.workdir)
        record: dict[str, Any] = {"step": step, "samples_seen": samples}
        record.update({f"eval/{k}": float(v) for k, v in values.items()})
        self.metrics.write(record)
        self.tb.write(step, record)
        if self.progress_enabled:
            shown = ", ".join(f"{k[5:]} {v:.3f}" for k, v in record.items() if k.endswith("acc1"))
            print(f"vlscale train: step {step} zero-shot: {shown}", flush=True)

    def _check_finite(self, state, step: int) -> None:
        import jax

        first, skipped = jax.device_get((state.first_nonfinite, state.skipped))
        self._last_state_skipped = skipped
        if int(first) >= 0 and not self.config.skip_nonfinite:
            self.mngr.wait_until_finished()  # then the latest step is committed: restored verified, or saved now
            latest = self.mngr.latest_step()
            where = f"the last good checkpoint is {self.workdir / 'checkpoints' / str(latest)}" if latest is not None \
                else "no checkpoint was saved yet"
            raise NonFiniteError(f"non-finite loss or gradients at step {int(first)}; {where}; lower the lr, or "
                                 "set --config.skip_nonfinite=true to skip such steps")

    def _check_data(self, state, step: int, samples: int) -> None:
        """The bad-sample guard, agreed over hosts; on a stop the checkpoint is saved before the error."""
        check = getattr(self.data, "check_bad_fraction", None)
        if not callable(check):
            return
        try:
            check()
        except UserError:
            self._save(state, step, samples)
            self.mngr.wait_until_finished()
            raise

    def _data_ended(self, state, step: int, samples: int, target: int, hosts_out: int) -> UserError:
        """The one-line stop when the training data runs out before the run's end, after saving what was trained
        (on every host together: with several, the loop agreed on ``hosts_out`` first)."""
        import jax

        self._save(state, step, samples)
        self.mngr.wait_until_finished()
        where = ""
        if jax.process_count() > 1:  # the global order ends on the same step on every host, with no agreement
            where = (f" on all {jax.process_count()} hosts" if getattr(self.data, "global_order", False)
                     else f" on {hosts_out} of {jax.process_count()} hosts")
        return UserError(f"training data ended{where} after step {step} of {target} ({samples:,} samples; "
                         f"data.num_epochs={self.config.data.get('num_epochs', None)}, and samples skipped as bad "
                         f"shorten it); checkpoint {self.workdir / 'checkpoints' / str(step)} saved; set "
                         "--config.data.num_epochs=None (repeat forever) or lower --config.total_samples")

    def _save(self, state, step: int, samples: int) -> None:
        from vlscale.runtime import checkpoint

        if self.mngr.latest_step() == step:
            return
        meta = {"step": step, "samples_seen": samples, "model": str(self.config.model),
                "milestone": step in self.milestone_steps, "data_fingerprint": self.fingerprint}
        checkpoint.save(self.mngr, state, self.data, meta)

    def _schedule_batch_size(self, how: str) -> int:
        """The global batch the learning-rate schedule counts steps of: the one this run started with."""
        if how == "resumed" and self.saved is not None:
            return int(self.saved.get("schedule_batch_size") or self.saved.get("global_batch_size") or self.gbs)
        return self.gbs

    def _write_run_json(self, how: str, *, schedule_batch_size: int) -> dict:
        from vlscale.train import run_info

        run_json = run_info.build_run_json(self.config, total_steps=self.total_steps,
                                           data_fingerprint=self.fingerprint)
        run_json["schedule_batch_size"] = int(schedule_batch_size)
        if self.saved is not None:
            run_json["wall_time_s"] = float(self.saved.get("wall_time_s", 0.0))
            run_json["device_hours"] = float(self.saved.get("device_hours", 0.0))
            run_json["provenance_history"] = list(self.saved.get("provenance_history", []))
            run_json["provenance_history"].append(self.saved.get("provenance"))
        if self.is_main:
            files.atomic_write_json(self.workdir / run_info.RUN_JSON, run_json)
        return run_json

    def _update_run_json(self, run_json: dict, elapsed: float) -> None:
        import jax

        from vlscale.train import run_info

        run_json["wall_time_s"] = float(run_json.get("wall_time_s", 0.0)) + elapsed
        run_json["device_hours"] = float(run_json.get("device_hours", 0.0)) + elapsed * jax.device_count() / 3600
        if self.is_main:
            files.atomic_write_json(self.workdir / run_info.RUN_JSON, run_json)
        # A later resume adds its own time to what this session measured.
        self.saved = dict(run_json)
        self.saved.pop("provenance_history", None)


def _cooldown(config, total_steps: int) -> int:
    from vlscale.train.optim import cooldown_steps

    return cooldown_steps(config, total_steps)
