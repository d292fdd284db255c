"""``form="auto"``: choose the law (and the objective) by how well it predicts the future, not by its fit.

Leave-future-out on the fitted frontier of every group: each candidate is fitted to all but the
``FUTURE_SHARE`` largest-compute fitted frontier points (at least ``MIN_FUTURE``) and predicts those; the score is
the mean relative error |predicted - observed| / observed over every group's future points. Candidates are the
registered one-input forms with a variable-projection profile, each with both objectives (mse and huber). The
lowest score wins; the table of candidates is returned (and printed) so the choice can be checked. The point
estimate is then the chosen form's ordinary optimum on all fitted points.
"""

from __future__ import annotations

import numpy as np

from vlscale.scaling import batch
from vlscale.scaling.forms import FORMS
from vlscale.scaling.options import LOSSES, Options
from vlscale.scaling.results import ResultsError

FUTURE_SHARE = 0.25
MIN_FUTURE = 2
# A candidate must keep this many more points than it has parameters in the shortened fit.
SPARE_POINTS = 1


def candidates() -> list[tuple[str, str]]:
    return [(name, loss) for name, f in FORMS.items() if f.n_inputs == 1 and f.profile is not None for loss in LOSSES]


def choose(preps, opts: Options) -> dict:
    """The winning (form, loss) and the table of candidates (see module doc)."""
    sets = []
    for p in preps:
        for name in p.names:
            x, y = p.fitted_xy(name)
            order = np.argsort(x, kind="stable")
            x, y = x[order], y[order]
            n_future = max(MIN_FUTURE, int(round(FUTURE_SHARE * len(x))))
            sets.append((x[:-n_future], y[:-n_future], x[-n_future:], y[-n_future:]))
    n_past = min(len(s[0]) for s in sets)
    rows = []
    for form, loss in candidates():
        f = FORMS[form]
        if n_past < f.n_params + SPARE_POINTS:
            rows.append({"form": form, "loss": loss, "error": None,
                         "note": f"skipped: {n_past} past points for {f.n_params} parameters"})
            continue
        curves = batch.fit_sets([(x, y, np.ones_like(x)) for x, y, _, _ in sets], form, loss=loss,
                                starts=batch.start_grid(form, "seeds"))
        errs = np.concatenate([np.abs(c.predict(xf) - yf) / yf for c, (_, _, xf, yf) in zip(curves, sets)])
        rows.append({"form": form, "loss": loss, "error": float(np.mean(errs)), "note": ""})
    scored = [r for r in rows if r["error"] is not None]
    if not scored:
        raise ResultsError("--form auto: no candidate form has enough frontier points for a leave-future-out check; "
                           "widen the selection or name a --form")
    best = min(scored, key=lambda r: r["error"])
    best["note"] = "chosen: lowest leave-future-out error"
    return {"form": best["form"], "loss": best["loss"], "n_future": [len(s[2]) for s in sets],
            "future_share": FUTURE_SHARE, "candidates": rows}


# A law tried from a list (``fallback``) should keep this many fitted points beyond its parameters; one is the
# least that leaves a residual degree of freedom (an interval), two let a bootstrap resample identify it often.
PREFERRED_SPARE = 2


def fallback(forms, counts: dict[str, int]) -> dict:
    """The first law of ``forms`` (tried in order) whose parameters leave every group ``PREFERRED_SPARE`` fitted
    points to spare, else the first that leaves one, else none.

    ``counts``: fitted points per group. Returns {"form": name or None, "spare": points to spare in the smallest
    group, "note": why this law (or why none)}. A law with no spare point would interpolate its points and have
    no interval, so it is never chosen.
    """
    from vlscale.scaling.forms import get_form

    forms = [forms] if isinstance(forms, str) else list(forms)
    group, n = min(counts.items(), key=lambda kv: kv[1])
    for need in (PREFERRED_SPARE, 1):
        for name in forms:
            p = get_form(name).n_params
            if n - p >= need:
                skipped = [f for f in forms[:forms.index(name)]]
                note = "" if not skipped else (
                    f"{name} instead of {', '.join(skipped)}: {group} has {n} fitted frontier points, "
                    f"{'too few' if need == PREFERRED_SPARE else 'not enough'} for "
                    + ", ".join(f"{f} ({get_form(f).n_params} parameters)" for f in skipped))
                if need == 1 and n - p < PREFERRED_SPARE:
                    note = (note + "; " if note else "") + (f"{name} keeps only {n - p} point to spare in {group}: "
                                                            "the interval is wide")
                return {"form": name, "spare": n - p, "note": note}
    smallest = min(forms, key=lambda f: get_form(f).n_params)
    p = get_form(smallest).n_params
    return {"form": None, "spare": n - p,
            "note": (f"{group} has {n} fitted frontier points; the smallest law tried ({smallest}, {p} parameters) "
                     f"needs at least {p + 1}")}
