"""What checkpoint integrity costs: the array checksums at save, and the checks at restore, on a given model.

    python bench/checkpoint_integrity.py --model tiny-clip [--repeats 5] [--json OUT]

Builds the trainer's state for the model (parameters, Adam moments, step, RNG) on the local devices and times,
as medians over ``--repeats``: the checksum of every array (``integrity.record``; its first call is reported
apart), a save with the checksums (``checkpoint.save`` + wait) against Orbax's save alone,
a training restore with every check (``checkpoint.restore``) against Orbax's restore alone, and the inference
read of the parameters (``checkpoint.restore_params``) against the unchecked read. The difference of each pair
is the overhead; a checkpoint's size is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time


def _median(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-clip")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", metavar="OUT")
    args = p.parse_args(argv)

    import jax
    import orbax.checkpoint as ocp

    from vlscale.configs import train as train_config
    from vlscale.data.pipeline import make_iterator
    from vlscale.runtime import checkpoint, integrity, sharding
    from vlscale.train import loop, step as step_lib

    cfg = train_config.get_config(f"model={args.model},data=synth")
    cfg.global_batch_size = 8
    cfg.total_samples = 64
    cfg.data.in_memory = True
    cfg.data.in_memory_samples = 64
    cfg = loop.resolve_config(cfg)
    mesh = sharding.make_mesh(len(jax.devices()), 1, 1)
    trainer = step_lib.get_train_step(cfg, mesh)
    state = jax.block_until_ready(trainer.init(0))
    abstract = trainer.abstract_state_with_shardings()
    data = make_iterator(cfg.data)
    n_arrays = len(jax.tree.leaves(state))
    n_bytes = sum(x.nbytes for x in jax.tree.leaves(state))

    t = time.perf_counter()
    rec = integrity.record(state)
    first = time.perf_counter() - t
    checksum_s = _median(lambda: integrity.record(state), args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        mngr = checkpoint.manager(tmp, keep=1 << 30, async_save=True)
        meta = {"step": 1, "samples_seen": 8, "model": args.model, "milestone": False}
        counter = iter(range(1, 10 ** 6))

        def save_checked():
            s = next(counter)
            checkpoint.save(mngr, state, data, dict(meta, step=s, samples_seen=8 * s))
            mngr.wait_until_finished()

        def save_plain():
            import grain

            s = next(counter)
            mngr.save(s, force=True, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data),
                meta=ocp.args.JsonSave(dict(meta, step=s, samples_seen=8 * s))))
            mngr.wait_until_finished()

        save_checked()  # warm both paths once
        save_plain()
        checked_save_s = _median(save_checked, args.repeats)
        plain_save_s = _median(save_plain, args.repeats)
        step = 1  # a checkpoint with checksums
        step_dir = os.path.join(tmp, "checkpoints", str(step))
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(step_dir) for f in fs)

        def restore_plain():
            import grain

            jax.block_until_ready(mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(data),
                meta=ocp.args.JsonRestore()))["state"])

        def restore_checked():
            jax.block_until_ready(checkpoint.restore(mngr, step, abstract, data)[0])

        restore_plain()
        restore_checked()
        plain_restore_s = _median(restore_plain, args.repeats)
        checked_restore_s = _median(restore_checked, args.repeats)
        checkpoint.restore_params(step_dir)
        plain_params_s = _median(lambda: checkpoint._read_params(step_dir), args.repeats)
        checked_params_s = _median(lambda: checkpoint.restore_params(step_dir), args.repeats)
        mngr.close()

    out = {
        "model": args.model, "device": jax.devices()[0].device_kind, "devices": len(jax.devices()),
        "arrays": n_arrays, "state_mb": n_bytes / 1e6, "checkpoint_mb": size / 1e6,
        "checksum_first_call_s": first, "checksum_s": checksum_s,
        "save_s": plain_save_s, "save_with_checksums_s": checked_save_s,
        "restore_s": plain_restore_s, "restore_verified_s": checked_restore_s,
        "restore_params_s": plain_params_s, "restore_params_verified_s": checked_params_s,
        "record_json_kb": len(json.dumps(rec)) / 1e3,
    }
    print(f"{args.model} on {out['devices']} x {out['device']}: {n_arrays} arrays, state {out['state_mb']:.1f} MB, "
          f"checkpoint {out['checkpoint_mb']:.1f} MB, checksum record {out['record_json_kb']:.1f} kB")
    print(f"  checksums of the state: {checksum_s * 1e3:.1f} ms ({n_bytes / checksum_s / 1e9:.2f} GB/s; first call "
          f"{first:.2f} s)")
    for what, plain, checked in (("save + wait", plain_save_s, checked_save_s),
                                 ("restore (training)", plain_restore_s, checked_restore_s),
                                 ("restore_params (inference)", plain_params_s, checked_params_s)):
        print(f"  {what:28s} Orbax alone {plain * 1e3:8.1f} ms   with integrity {checked * 1e3:8.1f} ms   "
              f"(+{(checked - plain) * 1e3:.1f} ms, {100 * (checked - plain) / plain:+.0f} %)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
