"""The scaling-law workflow as a Python API (what the CLI runs, and what a Colab user calls).

``fit(data, **options)`` selects rows, builds the Pareto frontier per group (model type by default), fits the
chosen law to the frontier points up to ``fit_max_compute``, and returns a ``FitReport``: predictions with the
curve's band (``lo``/``hi``), a prediction interval for new observations (``pred_lo``/``pred_hi``) and the
spread over near-optimal solutions (``spread_lo``/``spread_hi``, conditioning), held-out validation (every
frontier and best-per-compute point above ``fit_max_compute``), leave-one-out over the fitted frontier, and the
compute-optimal allocation D_opt(C), N_opt(C).

``compare(data, groups=..., **options)`` fits two groups on the same selection and returns a ``Comparison``: the
difference in predicted error at the requested compute values with its interval, the crossover compute, and a
verdict that states its strength. ``compare_benchmarks(data, **options)`` runs it over several benchmarks and
pretrain datasets and says whether the verdict is consistent (``ComparisonSet``). All have ``.summary()``,
``.to_json()``, ``.plot()`` and ``.save(out_dir)``. The keyword options are the fields of ``options.Options``.

The jobs live in their own modules: ``prepare`` (selection, frontiers), ``engine`` (batched fits, refits),
``evaluate`` (intervals, validation per group), ``conditioning``, ``comparison`` (differences, verdicts),
``form_choice`` (``form="auto"``), ``report``/``plots`` (output).
"""

from __future__ import annotations

from vlscale.runtime import compilation_cache as jax_cache
from vlscale.scaling.comparison import Comparison, ComparisonSet, compare_fitted, consistency, consistency_row
from vlscale.scaling.fitted import FitReport, GroupFit
from vlscale.scaling.options import (  # noqa: F401 (the API's constants)
    COMPARE_DEFAULTS, DEFAULT_BOOTSTRAP, DEFAULT_LEVEL, FIT_DEFAULTS, PAPER_BENCHMARKS, PAPER_FIT_MAX_COMPUTE,
    PAPER_PREDICT_AT, PAPER_PRETRAIN_DATASETS, Options, pair,
)
from vlscale.scaling.prepare import as_table, parse_benchmark, prepare, selection
from vlscale.scaling.results import ResultsError, Selection

__all__ = ["fit", "compare", "compare_benchmarks", "fitted_counts", "Options", "FitReport", "GroupFit", "Comparison",
           "ComparisonSet", "consistency_row", "parse_benchmark", "bootstrap_stream"]


def bootstrap_stream(seed: int, sel: Selection, group: str):
    """The random stream a group's bootstrap uses (seed + selection + group name)."""
    from vlscale.scaling.engine import stream_for

    return stream_for(seed, sel, group)


def _choose_form(df, preps, opts: Options):
    """``form="auto"``: the form (and objective) with the lowest leave-future-out error on these frontiers."""
    from vlscale.scaling import form_choice

    return form_choice.choose(preps, opts)


def _run(df, selections, opts: Options, groups):
    """Prepares every selection, picks the form, fits everything in one batch; returns (preps, fits, secs, comp)."""
    from vlscale.scaling.engine import fit_prepared
    from vlscale.scaling.forms import get_form
    from vlscale.scaling.options import AUTO_FORM

    jax_cache.enable()
    n_params = 2 if opts.form == AUTO_FORM else get_form(opts.form).n_params
    preps = [prepare(df, sel, opts, groups=groups, n_params=n_params, form_label=opts.form) for sel in selections]
    choice = None
    if opts.form == AUTO_FORM:
        choice = _choose_form(df, preps, opts)
        opts = opts.replace(form=choice["form"], loss=choice["loss"])
        for p in preps:  # the chosen form may need more points than the smallest candidate
            for name in p.names:
                if p.fitted[name].sum() < get_form(opts.form).n_params:
                    raise ResultsError(f"{name} has too few frontier points for form {opts.form}")
    fitted, secs, comp = fit_prepared(preps, opts)
    return preps, fitted, secs, comp, opts, choice


def fit(data, *, options: Options | None = None, **kwargs) -> FitReport:
    """Fits a scaling law per group (model type by default) to the Pareto frontier of one selection.

    ``data`` is a DataFrame in the ``vlscale.scaling.results`` schema or a path to one (CSV/parquet). Keywords
    are ``Options`` fields: e.g. ``benchmark``, ``pretrain_dataset``, ``model_types``, ``fit_max_compute`` (a
    number, or {group: number}), ``frontier_scope`` ("fit" | "all"), ``predict``, ``bootstrap`` (0: delta
    method), ``level``, ``form`` (or "auto"), ``loss``, ``starts``, ``tolerance`` (conditioning).
    """
    from vlscale.scaling import results as results_lib

    opts = Options.build(FIT_DEFAULTS if options is None else vars_of(options), **kwargs)
    opts = opts.replace(predict=results_lib.parse_float_list(opts.predict))
    df = as_table(data)
    sel = selection(opts, benchmark=opts.benchmark, metric=opts.metric, pretrain_dataset=opts.pretrain_dataset,
                    model_types=opts.model_types)
    (prep,), (groups_out,), secs, comp, used, choice = _run(df, [sel], opts, opts.groups)
    return FitReport(prep.selection, opts.group_by, groups_out, used.form, opts.frontier, opts.level, opts.bootstrap,
                     secs, comp, opts.frontier_scope, choice)


def compare(data, *, options: Options | None = None, **kwargs) -> Comparison:
    """Fits two groups (``groups``, default clip and mammut) on one selection and compares them (module doc)."""
    opts = Options.build(COMPARE_DEFAULTS if options is None else vars_of(options), **kwargs)
    opts = opts.replace(benchmarks=((opts.benchmark, opts.metric),), pretrain_datasets=(opts.pretrain_dataset,))
    return compare_benchmarks(data, options=opts).comparisons[0]


def compare_benchmarks(data, *, options: Options | None = None, **kwargs) -> ComparisonSet:
    """``compare`` on every (pretrain dataset, benchmark) pair; all fits share one batched call."""
    from vlscale.scaling import results as results_lib

    defaults = dict(COMPARE_DEFAULTS, benchmarks=PAPER_BENCHMARKS, pretrain_datasets=("datacomp_1b",))
    opts = Options.build(defaults if options is None else vars_of(options), **kwargs)
    opts = opts.replace(predict=results_lib.parse_float_list(opts.predict))
    df = as_table(data)
    two = pair(opts.groups)
    selections = []
    for pre in opts.pretrain_datasets:
        for bench in opts.benchmarks:
            ds, metric = parse_benchmark(bench)
            types = two if (two and opts.group_by == "model_type") else opts.model_types
            selections.append(selection(opts, benchmark=ds, metric=metric, model_types=types,
                                        pretrain_dataset=None if opts.group_by == "pretrain_dataset" else pre))
    preps, fitted, secs, comp, used, choice = _run(df, selections, opts, two)
    for p in preps:
        if len(p.names) != 2:
            raise ResultsError(f"{p.selection.label()} has groups {', '.join(p.names)}; compare needs exactly two "
                               "(pass --model-types A,B)")
    comparisons = []
    for p, groups_out in zip(preps, fitted):
        share = len(preps)
        rep = FitReport(p.selection, opts.group_by, groups_out, used.form, opts.frontier, opts.level, opts.bootstrap,
                        secs / share, comp / share, opts.frontier_scope, choice)
        comparisons.append(compare_fitted(rep, p.names[0], p.names[1], opts.predict, used))
    consistent, text = consistency(comparisons, opts.level)
    return ComparisonSet(comparisons, consistent, text, secs, comp)


def fitted_counts(data, *, options: Options | None = None, **kwargs) -> dict[str, int]:
    """How many frontier points each group of one selection would fit (no fit): what a caller choosing a law
    by its number of parameters (``form_choice.fallback``) needs. Keywords as for ``compare``."""
    opts = Options.build(COMPARE_DEFAULTS if options is None else vars_of(options), **kwargs)
    df = as_table(data)
    two = pair(opts.groups)
    types = two if (two and opts.group_by == "model_type") else opts.model_types
    sel = selection(opts, benchmark=opts.benchmark, metric=opts.metric, model_types=types,
                    pretrain_dataset=None if opts.group_by == "pretrain_dataset" else opts.pretrain_dataset)
    prep = prepare(df, sel, opts, groups=two, n_params=0, form_label="")
    return {name: int(prep.fitted[name].sum()) for name in prep.names}


def vars_of(options: Options) -> dict:
    import dataclasses

    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
