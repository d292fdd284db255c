"""`vlscale fit`, `vlscale compare` and `vlscale data laion-results`.

Only argparse-level code at import time (the CLI imports every package's cli module for `vlscale --help`);
pandas/jax load inside the handlers.
"""

from __future__ import annotations

import argparse
import sys
import time

from vlscale.commands import argtypes
from vlscale.commands import exits_at_once
from vlscale.scaling import options as _options

# Paper defaults (Nezhurina et al. 2025, scripts/fig1.sh) come from scaling.options (standard library only, so
# --help needs no numpy/JAX); here only their command-line spelling.
PAPER_BENCHMARKS = ",".join(f"{d}/{m}" for d, m in _options.PAPER_BENCHMARKS)
PAPER_PRETRAIN_DATASETS = ",".join(_options.PAPER_PRETRAIN_DATASETS)
PAPER_PREDICT_AT = ",".join(f"{c:g}" for c in _options.PAPER_PREDICT_AT)
PAPER_FIT_MAX_COMPUTE = f"{_options.PAPER_FIT_MAX_COMPUTE:g}"
PAPER_MAX_SAMPLES_SEEN = _options.PAPER_MAX_SAMPLES_SEEN
PAPER_MIN_COMPUTE = _options.PAPER_MIN_COMPUTE

FIT_EXAMPLES = """examples:
  vlscale fit --benchmark imagenet1k --pretrain-dataset datacomp_1b --lr-scheduler cosine \\
      --model-types clip,mammut --max-samples-seen 1e10 --fit-max-compute 1e12 --predict 2.14e12,2.59e12 --out runs/fit
  vlscale fit my_results.parquet --benchmark imagenet1k --frontier hull --form power_floor --bootstrap 0
"""
COMPARE_EXAMPLES = """examples:
  vlscale compare --out runs/demo                       # the paper's CLIP vs MaMMUT comparison, 3 benchmarks x 2 datasets
  vlscale compare --benchmark imagenet1k --pretrain-dataset relaion2b-en --fit-max-compute none
  vlscale compare --group-by pretrain_dataset --model-types mammut --benchmark imagenet1k   # datasets, not models
"""


def _float_or_none(text: str):
    if text is None or str(text).lower() in ("none", "inf", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number (use e.g. 1e12, or none)") from None


def _fit_max(text: str):
    """``1e12`` or ``clip:1e12,mammut:5e11`` (per group, like the paper's --large_flops_mapping) or ``none``."""
    if text is None or str(text).lower() in ("none", "inf", ""):
        return None
    if ":" not in text:
        return _float_or_none(text)
    out = {}
    for item in text.split(","):
        name, _, value = item.partition(":")
        if not name or not value:
            raise argparse.ArgumentTypeError(f"{item!r}: write GROUP:COMPUTE, e.g. clip:1e12")
        out[name] = _float_or_none(value)
    return out


def _csv(text: str | None):
    if text is None:
        return None
    items = tuple(s.strip() for s in text.split(","))
    if any(not t for t in items):
        from vlscale.errors import UserError

        raise UserError(f"{text!r} has an empty item; separate values with single commas")
    return items


# What fit/compare write into --out (a stale one from an earlier run is removed when the new set lands). Exact
# names, not fit.*: --out may be a folder that also holds the user's own fit.py.
OWNED_OUTPUTS = ("fit.json", "fit.csv", "fit.tex", "fit.png", "fit.pdf")
# Peak memory of the bootstrap per resample and fitted frontier: about 8 KB measured (one frontier, 40000
# resamples, peak RSS over --bootstrap 0), doubled for headroom.
BOOTSTRAP_BYTES_PER_RESAMPLE = 16 * 1024


def _check_before_work(args, n_frontiers: int) -> None:
    """Output folder and bootstrap memory checked before any fitting (one-line errors, nothing written)."""
    from vlscale.runtime.resources import check_memory

    if args.out:
        from vlscale.runtime.files import check_output_dir

        check_output_dir(args.out)
    check_memory(args.bootstrap * max(1, n_frontiers) * BOOTSTRAP_BYTES_PER_RESAMPLE,
                 f"--bootstrap {args.bootstrap} over {n_frontiers} frontier(s)",
                 "use fewer resamples (1000 gives stable 95 % intervals) or 0 for delta-method intervals")


def _save_atomically(result, out, say=None) -> str:
    """Writes the whole set into a temporary folder, then moves it into --out together."""
    from pathlib import Path

    from vlscale.runtime.files import atomic_output_dir

    if say:
        say(f"writing {out} ...")

    with atomic_output_dir(out, owned=OWNED_OUTPUTS) as tmp:
        paths = result.save(tmp)
    return _written({k: Path(out) / Path(p).name for k, p in paths.items()})


def _selection_args(p: argparse.ArgumentParser, *, compare: bool) -> None:
    p.add_argument("results", nargs="?", default=None,
                   help="results table (CSV or parquet; columns in docs/scaling.md). Default: the paper's table from "
                        "$VLSCALE_RESULTS or ../shared/data")
    sel = p.add_argument_group("selection")
    if compare:
        sel.add_argument("--benchmark", default=None,
                         help="benchmark(s), comma-separated, each DATASET or DATASET/METRIC (default: those of "
                              f"{PAPER_BENCHMARKS} that the table has)")
        sel.add_argument("--pretrain-dataset", default=None,
                         help=f"pretrain dataset(s), comma-separated (default: those of {PAPER_PRETRAIN_DATASETS} "
                              "that the table has)")
        sel.add_argument("--lr-scheduler", default="cosine", help="(default: %(default)s)")
        sel.add_argument("--model-types", default="clip,mammut",
                         help="the two model types to compare (or, with --group-by pretrain_dataset, the model type "
                              "to keep) (default: %(default)s)")
    else:
        sel.add_argument("--benchmark", help="downstream dataset, e.g. imagenet1k, mscoco_captions")
        sel.add_argument("--pretrain-dataset", help="e.g. datacomp_1b, relaion2b-en")
        sel.add_argument("--lr-scheduler", help="e.g. cosine, const")
        sel.add_argument("--model-types", help="model types to fit, comma-separated (default: all in the selection)")
    sel.add_argument("--metric", help="metric (default: the paper's for the benchmark, e.g. acc1 for imagenet1k)")
    sel.add_argument("--models", help="keep only these architectures, comma-separated (e.g. ViT-B-32,ViT-L-14)")
    sel.add_argument("--group-by", default="model_type", choices=("model_type", "pretrain_dataset", "model"),
                     help="one curve per value of this column (default: %(default)s)")
    sel.add_argument("--x", default=None,
                     help="compute column: compute_gflops_actual (the paper's gflops_total; the default when "
                          "present), compute_gflops (the default otherwise), samples_seen_actual, samples_seen")
    sel.add_argument("--min-compute", type=_float_or_none, default=PAPER_MIN_COMPUTE if compare else None,
                     help="drop rows below this compute before the frontier" + (" (default: 1e6)" if compare else ""))
    sel.add_argument("--max-compute", type=_float_or_none, help="drop rows above this compute before the frontier")
    sel.add_argument("--max-samples-seen", type=_float_or_none, default=PAPER_MAX_SAMPLES_SEEN if compare else None,
                     help="drop runs that saw more samples" + (" (default: 1e10)" if compare else ""))
    fit = p.add_argument_group("fit")
    fit.add_argument("--form", default="saturation_both",
                     help="law: saturation_both a(C+b)^c+d, saturation, power, power_floor, or auto (the form and "
                          "objective with the lowest leave-future-out error on the frontier) (default: %(default)s)")
    fit.add_argument("--frontier", default="bins", choices=_options.FRONTIER_METHODS,
                     help="Pareto frontier method (default: %(default)s, the paper's)")
    fit.add_argument("--frontier-scope", default="fit", choices=_options.FRONTIER_SCOPES,
                     help="which runs build the fitted frontier: fit = only runs <= --fit-max-compute (held-out runs "
                          "cannot move it), all = every run (the paper's) (default: %(default)s)")
    fit.add_argument("--starts", default="seeds", choices=("seeds", "paper"),
                     help="main-fit starts: variable-projection seeds (fast, default) or also the paper's 3200-point "
                          "grid (same optima on the paper's data, ~100x slower)")
    fit.add_argument("--loss", default="mse", choices=("mse", "huber"), help="(default: %(default)s)")
    fit.add_argument("--fit-max-compute", type=_fit_max, default=_fit_max(PAPER_FIT_MAX_COMPUTE) if compare else None,
                     help="fit only frontier points with compute <= this (or GROUP:C,GROUP:C, or none) and validate "
                          "on the points above" + (f" (default: {PAPER_FIT_MAX_COMPUTE}, the paper's)" if compare else ""))
    fit.add_argument("--predict", "--at", dest="predict", type=argtypes.positive_float_list,
                     default=PAPER_PREDICT_AT if compare else None,
                     help="compute values to predict at, comma-separated" + (" (default: %(default)s)" if compare else ""))
    fit.add_argument("--bootstrap", type=argtypes.count, default=1000,
                     help="bootstrap resamples for intervals; 0 = delta method (default: %(default)s)")
    fit.add_argument("--level", type=float, default=0.95, help="interval level (default: %(default)s)")
    fit.add_argument("--seed", type=argtypes.nonnegative_int, default=0, help="bootstrap seed (default: %(default)s)")
    fit.add_argument("--no-loo", action="store_true", help="skip leave-one-out validation")
    fit.add_argument("--tolerance", type=float, default=_options.DEFAULT_TOLERANCE,
                     help="conditioning: solutions with objective within this relative distance of the best count as "
                          "near-optimal; their spread is reported beside every prediction (default: %(default)s)")
    fit.add_argument("--min-difference", type=argtypes.nonnegative_float, default=_options.DEFAULT_MIN_DIFFERENCE,
                     help="compare: smaller differences in error are 'no difference' (absolute for accuracy-like "
                          "metrics, relative for losses) (default: %(default)s)")
    fit.add_argument("--metric-kind", default=None,
                     help="declare metrics the fitter does not know: NAME:accuracy (error = 1 - value) or NAME:loss, "
                          "comma-separated")
    out = p.add_argument_group("output")
    out.add_argument("--out", help="write fit.json, fit.csv, fit.tex, fit.png, fit.pdf into this folder")
    out.add_argument("--quiet", action="store_true", help="no progress lines")


def _progress(args):
    if args.quiet:
        return None
    start = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - start:5.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


# Flags that name things in the table: an empty name (``--benchmark ''``) is a mistake, never "the default".
NAME_FLAGS = (("--benchmark", "benchmark"), ("--pretrain-dataset", "pretrain_dataset"),
              ("--lr-scheduler", "lr_scheduler"), ("--model-types", "model_types"), ("--metric", "metric"),
              ("--models", "models"))


def _check_names(args) -> None:
    from vlscale.errors import UserError

    for flag, attr in NAME_FLAGS:
        value = getattr(args, attr, None)
        if value is not None and any(not s.strip() for s in value.split(",")):
            raise UserError(f"{flag} {value!r}: an empty name; give names separated by single commas, or leave "
                            f"{flag} out for the default")


def _load(args):
    from vlscale.runtime.paths import resolve_results_table
    from vlscale.scaling.results import load_results

    import warnings

    from vlscale.scaling import metrics
    from vlscale.scaling.results import ResultsWarning

    _check_names(args)
    source = resolve_results_table(args.results)
    print(source.describe(), flush=True)  # first line: which table this verdict is about
    for name, kind in metrics.parse_metric_kinds(getattr(args, "metric_kind", None)).items():
        metrics.register_metric(name, kind)  # before validation: declared metrics get their range checked
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        df = load_results(source.path)
    _show_table_warnings([w for w in caught if issubclass(w.category, ResultsWarning)])
    return df, source.path


def _new_options(args) -> dict:
    """The fitter's trust options: frontier scope, conditioning tolerance, practical threshold."""
    return dict(frontier_scope=args.frontier_scope, tolerance=args.tolerance, min_difference=args.min_difference)


def _show_table_warnings(caught) -> None:
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def _written(paths: dict) -> str:
    return "wrote " + ", ".join(str(p) for p in paths.values())


def _figures_drawn_aside(args):
    """With --out, a renderer process starts now and draws the figure while this one fits (``render_worker``)."""
    from vlscale.scaling import render_worker

    return render_worker.use(render_worker.Renderer.start() if args.out else None)


@exits_at_once
def run_fit(args) -> int:
    with _figures_drawn_aside(args):
        return _run_fit(args)


def _run_fit(args) -> int:
    from vlscale.scaling import api

    df, path = _load(args)
    types = _csv(args.model_types)
    _check_before_work(args, len(types) if types else int(df[args.group_by].nunique()))
    say = _progress(args)
    if say:
        say(f"read {len(df)} rows from {path}")
    rep = api.fit(
        df, benchmark=args.benchmark, metric=args.metric, pretrain_dataset=args.pretrain_dataset,
        lr_scheduler=args.lr_scheduler, model_types=_csv(args.model_types), models=_csv(args.models),
        group_by=args.group_by, x=args.x, form=args.form, frontier=args.frontier, min_compute=args.min_compute,
        max_compute=args.max_compute, max_samples_seen=args.max_samples_seen, fit_max_compute=args.fit_max_compute,
        predict=args.predict or (), bootstrap=args.bootstrap, level=args.level, loss=args.loss, seed=args.seed,
        leave_one_out=not args.no_loo, starts=args.starts, progress=say, **_new_options(args),
    )
    print(rep.summary())
    print(f"\n   fit time {rep.fit_seconds:.1f} s (of which JAX compilation {rep.compile_seconds:.1f} s)")
    if args.out:
        print(_save_atomically(rep, args.out, say))
    return 0


def _present(df, defaults: tuple[str, ...], what: str) -> tuple[str, ...]:
    """The paper's default benchmarks/datasets that the table holds (a user's own table may have fewer)."""
    from vlscale.errors import UserError

    if what == "benchmark":
        have = set(zip(df["downstream_dataset"], df["metric"]))
        keep = tuple(d for d in defaults if tuple(d.split("/", 1)) in have)
        flag, available = "--benchmark", sorted({f"{a}/{b}" for a, b in have})
    else:
        have = set(df["pretrain_dataset"])
        keep = tuple(d for d in defaults if d in have)
        flag, available = "--pretrain-dataset", sorted(have)
    if not keep:
        raise UserError(f"the table has none of the default {what}s ({', '.join(defaults)}); pass {flag} with some "
                        f"of: {', '.join(available)}")
    return keep


@exits_at_once
def run_compare(args) -> int:
    with _figures_drawn_aside(args):
        return _run_compare(args)


def _run_compare(args) -> int:
    from vlscale.scaling import api

    df, path = _load(args)
    say = _progress(args)
    benchmark_specs = _csv(args.benchmark) if args.benchmark else _present(df, _csv(PAPER_BENCHMARKS), "benchmark")
    benchmarks = [api.parse_benchmark(b) for b in benchmark_specs]
    if args.metric:
        benchmarks = [(ds, args.metric) for ds, _ in benchmarks]
    types = _csv(args.model_types)
    by_dataset = args.group_by == "pretrain_dataset"
    datasets = (_csv(args.pretrain_dataset) if args.pretrain_dataset
                else _present(df, _csv(PAPER_PRETRAIN_DATASETS), "pretrain_dataset"))
    _check_before_work(args, 2 * len(benchmarks) * (1 if by_dataset else len(datasets)))
    if say:
        say(f"read {len(df)} rows from {path}; comparing {' vs '.join(datasets if by_dataset else types)} on "
            f"{len(benchmarks)} benchmark(s)" + ("" if by_dataset else f" x {len(datasets)} pretrain dataset(s)"))
    cs = api.compare_benchmarks(
        df, groups=datasets if by_dataset else types, group_by=args.group_by, at=args.predict or (),
        benchmarks=benchmarks, pretrain_datasets=[None] if by_dataset else datasets, lr_scheduler=args.lr_scheduler,
        model_types=types if by_dataset else None, models=_csv(args.models), x=args.x, form=args.form,
        frontier=args.frontier, min_compute=args.min_compute, max_compute=args.max_compute,
        max_samples_seen=args.max_samples_seen, fit_max_compute=args.fit_max_compute, bootstrap=args.bootstrap,
        level=args.level, loss=args.loss, seed=args.seed, leave_one_out=not args.no_loo, starts=args.starts,
        progress=say, **_new_options(args),
    )
    print(cs.summary())
    if args.out:
        print(_save_atomically(cs, args.out, say))
    return 0


def _laion_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder to write laion_scaling_results.csv into")
    p.add_argument("--notebook", help="a local copy of overview.ipynb (skips the download)")
    p.add_argument("--model-profile", help="a local copy of model_profile.csv (skips the download)")
    p.add_argument("--ref", default=None, help="git ref of LAION-AI/scaling-laws-for-comparison (default: pinned commit)")


def run_laion_results(args) -> int:
    from pathlib import Path

    from vlscale.errors import UserError
    from vlscale.runtime.paths import LAION_RESULTS_FILE
    from vlscale.scaling import laion_notebook as ln

    if bool(args.notebook) != bool(args.model_profile):
        raise UserError("pass both --notebook and --model-profile (offline), or neither (download)")
    from vlscale.runtime.files import check_output_dir

    check_output_dir(args.out)
    if args.notebook:
        texts = []
        for flag, f in (("--notebook", args.notebook), ("--model-profile", args.model_profile)):
            if not Path(f).is_file():
                raise UserError(f"{f} does not exist; pass the path of your local copy")
            try:
                texts.append(Path(f).read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise UserError(f"{flag} {f}: not UTF-8 text (a binary file?); pass the repository's "
                                f"{ln.NOTEBOOK_PATH if flag == '--notebook' else ln.MODEL_PROFILE_PATH}") from None
        nb_text, profile_text = texts
    else:
        print(f"downloading {ln.NOTEBOOK_PATH} and {ln.MODEL_PROFILE_PATH} from github.com/{ln.LAION_REPO} ...",
              file=sys.stderr)
        nb_text, profile_text = ln.download_sources(args.ref or ln.LAION_COMMIT)
    df = ln.parse_notebook(nb_text, ln.read_model_profile(profile_text))
    out = Path(args.out)
    from vlscale.runtime.files import atomic_path

    path = out / LAION_RESULTS_FILE
    with atomic_path(path) as tmp:  # readers of an existing table never see half of the new one
        ln.write_results_csv(df, tmp)
    with __import__("pandas").option_context("display.width", 160, "display.max_columns", 20):
        print(ln.summary_counts(df).to_string())
    print(f"wrote {len(df)} rows to {path}")
    return 0


def register(registry) -> None:
    registry.add(
        "fit", "Fit a scaling law to the Pareto frontier of a results table (per model type).",
        lambda p: _selection_args(p, compare=False), run_fit,
        description="Fit a scaling law per group to the Pareto frontier of error vs compute, predict with intervals, "
                    "and validate on held-out points.\n\n" + FIT_EXAMPLES,
    )
    registry.add(
        "compare", "Compare two model types (or datasets) by their fitted scaling laws, across benchmarks.",
        lambda p: _selection_args(p, compare=True), run_compare,
        description="Fit both groups on the same selection, report the difference in predicted error with bootstrap "
                    "intervals, the crossover compute and a verdict, per benchmark and pretrain dataset, and whether "
                    "the verdict is consistent. With no arguments: the paper's CLIP vs MaMMUT comparison.\n\n"
                    + COMPARE_EXAMPLES,
    )
    registry.add(
        "laion-results", "Rebuild the paper's published results table from LAION's overview.ipynb.", _laion_args,
        run_laion_results, group="data",
        description="Downloads overview.ipynb and model_profile.csv from LAION-AI/scaling-laws-for-comparison (needs "
                    "network; or pass local copies) and writes the long-format laion_scaling_results.csv.",
    )
