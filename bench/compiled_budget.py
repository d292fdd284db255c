"""What the compiled train step will cost on any accelerator: FLOPs, collectives and their bytes, peak memory.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python bench/compiled_budget.py --model mammut_ViT-B-32 --batch 64 --fsdp 8 [--data 1] [--json OUT]

Compiles the real step (``vlscale.train.step.get_train_step``, lowered on abstract inputs as ``train --dry-run``
does; nothing is allocated or run) for a model, global batch and mesh, then reads the optimized program:

* FLOPs against the paper convention, forward x 3 (``vlscale.models.flops.training_flops``), two ways: every
  ``dot`` and ``convolution`` of the optimized program, times its loop trip counts and the device count; and XLA's
  cost analysis (per device, times the device count), which counts a ``while`` body once, so it undercounts
  chunked losses and scanned layers.
* Collectives: every all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute in the optimized
  HLO text, each counted as many times per step as it runs: a collective inside a ``while`` body counts once per
  iteration (the loop's ``known_trip_count``), nested loops multiply. Bytes are those of the *unsharded* buffer the
  collective produces or consumes (all-gather: its result; the others: their operands), so an all-gather of the
  parameters counts their full size, the same convention as the FSDP minimum below.
* FSDP minimum: two all-gathers of the parameters (forward and the rematerialised backward) plus one
  reduce-scatter of the gradients, 3 x the parameter bytes.
* Peak memory per device: XLA's memory analysis, arguments + outputs - aliased (donated) + temporaries.

``--sites N`` also lists the N collective sites that move the most bytes per step, with the JAX op that made them.
Fake CPU devices give the same SPMD partitioning as a real mesh; the CPU backend's own fusion decisions differ from
a GPU's or TPU's, so treat the collective list as the partitioner's plan, not a profile.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_ELEMENT_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                  "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLEE = re.compile(r"\b(condition|body|calls|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string, a tuple's elements summed (``f32[4,8]{1,0}`` -> 128)."""
    total = 0
    for element, dims in _ARRAY.findall(shape):
        size = _ELEMENT_BYTES.get(element, 1)  # f8 types: one byte
        total += size * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _split_shape(rest: str) -> tuple[str, str]:
    """``(f32[2], s32[]) while(...)`` -> (shape, ``while(...)``): tuple shapes hold spaces, so match the brackets."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].lstrip()
    shape, _, tail = rest.partition(" ")
    return shape, tail


def _tuple_elements(shape: str) -> list[str]:
    inner = shape[1:-1] if shape.startswith("(") else shape
    return [m.group(0) for m in _ARRAY.finditer(inner)]


@dataclasses.dataclass
class Collective:
    kind: str  # one of COLLECTIVES
    name: str  # the HLO instruction
    computation: str
    bytes: int  # unsharded bytes per execution
    times: int = 1  # executions per step (loop trip counts multiplied)
    trip_known: bool = True
    op_name: str = ""
    shape: str = ""  # the HLO result shape (a tuple for a combined collective)

    @property
    def bytes_per_step(self) -> int:
        return self.bytes * self.times


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _matmul_flops(op: str, shape: str, tail: str, shapes: dict[str, str]) -> int:
    """2 x multiply-adds of a ``dot`` (result elements x contracted size) or ``convolution`` (result elements x
    kernel elements per output feature)."""
    operands = re.findall(r"%([\w.\-]+)", tail.split("(", 1)[1].split(")", 1)[0])
    out = math.prod(_dims(shape))
    if op == "dot":
        lhs = _dims(shapes.get(operands[0], "")) if operands else []
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", tail)
        k = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d) if contracting and lhs else 1
        return 2 * out * k
    kernel = _dims(shapes.get(operands[1], "")) if len(operands) > 1 else []
    labels = re.search(r"dim_labels=\w+_(\w+)->", tail)
    per_output = math.prod(kernel) // kernel[labels.group(1).index("o")] if kernel and labels else 1
    return 2 * out * per_output


def parse_collectives(hlo_text: str) -> list[Collective]:
    """Every collective of an optimized HLO module with its bytes and its executions per step.

    A collective in a computation reached through ``while`` bodies runs once per iteration of each (the loop's
    ``known_trip_count`` from its backend config); a loop without a known trip count counts once and marks the
    collective ``trip_known=False``. Both branches of a conditional count as run (an upper bound).
    Async pairs count at their ``-start``.
    """
    return parse_program(hlo_text)[0]


def parse_program(hlo_text: str) -> tuple[list[Collective], int]:
    """(``parse_collectives``, the FLOPs of every dot and convolution per step, loop bodies times their trip
    count: XLA's cost analysis counts a ``while`` body once)."""
    shapes: dict[str, str] = {}
    callers: dict[str, list[tuple[str, int, bool]]] = {}  # callee -> [(caller, factor, factor known)]
    found: list[tuple[str, str, str, str, str]] = []  # (computation, name, op, shape, rest)
    matmuls: list[tuple[str, int]] = []  # (computation, FLOPs per execution)
    entry, current = None, None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header and "=" not in line.split("(", 1)[0]:
            current = header.group(2)
            if header.group(1):
                entry = current
            continue
        m = _INSTR.match(line)
        if not m or current is None:
            continue
        name, rest = m.groups()
        shape, tail = _split_shape(rest)
        shapes[name] = shape
        op = tail.split("(", 1)[0]
        trip = _TRIP.search(tail)
        for attr, callee in _CALLEE.findall(tail):
            loop = op == "while" and attr in ("condition", "body")
            callers.setdefault(callee, []).append(
                (current, int(trip.group(1)) if (loop and trip) else 1, not loop or bool(trip)))
        for branches in _BRANCHES.findall(tail):
            for callee in re.findall(r"%?([\w.\-]+)", branches):
                callers.setdefault(callee, []).append((current, 1, True))
        if op in ("dot", "convolution"):
            matmuls.append((current, _matmul_flops(op, shape, tail, shapes)))
        kind = op[:-len("-start")] if op.endswith("-start") else op
        if kind in COLLECTIVES:
            found.append((current, name, kind, shape, tail))
        elif op == "async-start" and re.search(r"calls=%?[\w.\-]*(" + "|".join(COLLECTIVES) + ")", tail):
            kind = next(k for k in COLLECTIVES if k in re.search(r"calls=%?([\w.\-]+)", tail).group(1))
            found.append((current, name, kind, shape, tail))

    memo: dict[str, tuple[int, bool]] = {}

    def times(comp: str, seen: frozenset = frozenset()) -> tuple[int, bool]:
        if comp == entry or comp in seen:
            return 1, True
        if comp not in memo:
            total, known = 0, True
            for caller, factor, factor_known in callers.get(comp, []):
                n, k = times(caller, seen | {comp})
                total += n * factor
                known = known and k and factor_known
            memo[comp] = (total, known)
        return memo[comp]

    out = []
    for comp, name, kind, shape, tail in found:
        args = tail.split("(", 1)[1].split(")", 1)[0]
        operands = re.findall(r"%([\w.\-]+)", args)
        if kind == "all-gather":
            elements = _tuple_elements(shape)
            # all-gather-start's result is (operands..., results...): the gathered buffers are the second half.
            nbytes = sum(shape_bytes(e) for e in elements[len(elements) // 2:]) if tail.startswith(
                "all-gather-start") else shape_bytes(shape)
        else:
            nbytes = sum(shape_bytes(shapes.get(o, "")) for o in operands) or shape_bytes(shape)
        n, known = times(comp)
        op_name = _OP_NAME.search(tail)
        out.append(Collective(kind, name, comp, nbytes, n, known, op_name.group(1) if op_name else "",
                              re.sub(r"\{[\d,]*\}", "", shape)))
    return out, sum(f * times(comp)[0] for comp, f in matmuls)


def summarize(collectives: list[Collective]) -> dict[str, dict[str, int]]:
    """Per kind: sites, executions per step and bytes per step."""
    table = {k: {"sites": 0, "executions": 0, "bytes": 0} for k in COLLECTIVES}
    for c in collectives:
        row = table[c.kind]
        row["sites"] += 1
        row["executions"] += c.times
        row["bytes"] += c.bytes_per_step
    return table


# --- the real step ----------------------------------------------------------------------------------------------------


def _abstract_batch(trainer, gbs: int, image_dtype: str):
    import jax
    import numpy as np

    cfg = trainer.config
    return {
        "image": jax.ShapeDtypeStruct((gbs, cfg.image_size, cfg.image_size, 3), np.dtype(image_dtype),
                                      sharding=trainer.batch_shardings["image"]),
        "text": jax.ShapeDtypeStruct((gbs, cfg.context_length), np.int32, sharding=trainer.batch_shardings["text"]),
    }


def budget(model: str, batch: int, data: int = 1, fsdp: int = 8, tensor: int = 1, dtype: str | None = None,
           remat: str | None = None, scan_layers: bool | None = None, sites: int = 0) -> dict:
    import jax
    import numpy as np

    from vlscale.configs import train as train_config
    from vlscale.models import flops
    from vlscale.runtime import sharding
    from vlscale.train import optim, step as step_lib, validate

    config = train_config.get_config(f"model={model},data=synth")
    config.global_batch_size = batch
    config.total_samples = batch * 1000
    for field, value in (("dtype", dtype), ("remat", remat), ("scan_layers", scan_layers)):
        if value is not None:
            config[field] = value
    mesh = sharding.make_mesh(data, fsdp, tensor, devices=jax.devices()[:data * fsdp * tensor])
    trainer = step_lib.get_train_step(config, mesh)
    sched = optim.schedule_params(config, validate.total_steps(config))
    t = time.perf_counter()
    compiled = trainer.lower(_abstract_batch(trainer, batch, "float32"), sched).compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    mem = compiled.memory_analysis()
    collectives, matmul_flops = parse_program(compiled.as_text())
    param_bytes = sum(int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
                      for a in jax.tree.leaves(trainer.abstract_state.params))
    n = mesh.size
    peak = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    top = sorted(collectives, key=lambda c: -c.bytes_per_step)[:sites]
    return {
        "model": model, "batch": batch, "mesh": dict(mesh.shape), "dtype": trainer.spec.dtype,
        "remat": trainer.spec.remat, "scan_layers": trainer.spec.scan_layers, "compile_s": compile_s,
        "xla_flops": float(cost.get("flops", math.nan)) * n, "hlo_matmul_flops": float(matmul_flops) * n,
        "paper_flops_x3": flops.training_flops(model, batch_size=batch),
        "collectives": summarize(collectives),
        "unknown_trip_counts": sum(not c.trip_known for c in collectives),
        "param_bytes": param_bytes, "fsdp_min_bytes": 3 * param_bytes if fsdp * tensor > 1 else 0,
        "grad_allreduce_min_bytes": param_bytes if fsdp * tensor == 1 and n > 1 else 0,
        "peak_bytes_per_device": int(peak), "temp_bytes_per_device": int(mem.temp_size_in_bytes),
        "sites": [dataclasses.asdict(c) | {"bytes_per_step": c.bytes_per_step} for c in top],
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f}"


def format_budget(r: dict) -> str:
    mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items() if v > 1) or "1 device"
    lines = [f"{r['model']}  batch {r['batch']}  mesh {mesh}  {r['dtype']}  remat={r['remat']}  "
             f"scan_layers={r['scan_layers']}  (compiled in {r['compile_s']:.0f} s)",
             f"  FLOPs/step      paper x3 {r['paper_flops_x3']:.3e}   HLO dots x trip counts "
             f"{r['hlo_matmul_flops']:.3e} (ratio {r['hlo_matmul_flops'] / r['paper_flops_x3']:.2f})   XLA cost "
             f"analysis {r['xla_flops']:.3e} (ratio {r['xla_flops'] / r['paper_flops_x3']:.2f}; loop bodies once)",
             f"  {'collective':<20}{'sites':>6}{'runs/step':>11}{'MB/step':>12}"]
    total = 0
    for kind, row in r["collectives"].items():
        total += row["bytes"]
        lines.append(f"  {kind:<20}{row['sites']:>6}{row['executions']:>11}{_mb(row['bytes']):>12}")
    minimum = r["fsdp_min_bytes"] or r["grad_allreduce_min_bytes"]
    label = "FSDP minimum (2 gathers + 1 reduce-scatter of the params)" if r["fsdp_min_bytes"] else \
        "data-parallel minimum (1 all-reduce of the gradients)"
    lines.append(f"  {'total':<37}{_mb(total):>12}   {label} {_mb(minimum)}"
                 + (f"   ratio {total / minimum:.2f}" if minimum else ""))
    if r["unknown_trip_counts"]:
        lines.append(f"  warning: {r['unknown_trip_counts']} collective(s) in loops of unknown trip count, "
                     "counted once")
    lines.append(f"  peak memory     {r['peak_bytes_per_device'] / 2**30:.3f} GiB per device "
                 f"(temporaries {r['temp_bytes_per_device'] / 2**30:.3f} GiB)")
    for s in r["sites"]:
        lines.append(f"    {s['kind']:<18} x{s['times']:<4} {_mb(s['bytes_per_step']):>10} MB  {s['shape'][:60]:<60}  "
                     f"{s['op_name'][-70:]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, action="append", help="a vlscale model name (repeatable)")
    parser.add_argument("--batch", type=int, required=True, help="global batch size")
    parser.add_argument("--data", type=int, default=1, help="mesh.data")
    parser.add_argument("--fsdp", type=int, default=8, help="mesh.fsdp")
    parser.add_argument("--tensor", type=int, default=1, help="mesh.tensor")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="default: the config's")
    parser.add_argument("--remat", choices=("none", "block", "full"), default=None, help="default: the config's")
    parser.add_argument("--scan-layers", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--sites", type=int, default=0, help="list the N collective sites moving the most bytes")
    parser.add_argument("--json", metavar="OUT", help="write the results as JSON")
    args = parser.parse_args(argv)
    results = []
    for model in args.model:
        r = budget(model, args.batch, args.data, args.fsdp, args.tensor, args.dtype, args.remat, args.scan_layers,
                   args.sites)
        print(format_budget(r), flush=True)
        results.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
