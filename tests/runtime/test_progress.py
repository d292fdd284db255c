"""The one progress display: plain lines off a terminal, rates and ETAs that leave the compiling step out."""

import io
import time

from vlscale.runtime import progress


def test_plain_lines_off_a_terminal_and_eta_from_the_first_update():
    out = io.StringIO()  # not a tty
    p = progress.Progress(100, initial=0, unit="step", stream=out)
    p.update(1, loss="2.0000")  # the compiling step: starts the clock, no rate yet
    time.sleep(0.05)
    p.update(11, loss="1.5000")
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "step 1/100  loss 2.0000"
    assert lines[1].startswith("step 11/100  loss 1.5000  ETA ")
    # 10 steps in ~0.05 s -> ~0.45 s for the 89 left: "0:00", not the minutes a compile-inclusive ETA would show
    assert lines[1].endswith("ETA 0:00") or lines[1].endswith("ETA 0:01")


def test_rate_is_measured_since_the_first_update_not_construction():
    p = progress.Progress(10, enabled=True, stream=io.StringIO())
    time.sleep(0.2)  # "compilation" before the first update
    first_rate, first_eta = p.rate_and_eta(2)  # the first call starts the clock: no rate yet
    assert first_rate != first_rate and first_eta != first_eta  # NaN
    time.sleep(0.05)
    rate, eta = p.rate_and_eta(4)
    assert 2 / 0.5 < rate < 2 / 0.04  # ~40/s from the 0.05 s between updates, far above 2 / 0.25 s = 8/s
    assert eta == (10 - 4) / rate


def test_disabled_and_quiet_modes_print_nothing():
    out = io.StringIO()
    progress.Progress(5, enabled=False, stream=out).update(3, loss="1")
    progress.Progress(5, plain_lines=False, stream=out).update(3)  # evaluation's batches off a terminal
    assert out.getvalue() == ""


def test_hms():
    assert progress.hms(59) == "0:59" and progress.hms(61) == "1:01" and progress.hms(3 * 3600 + 5) == "3:00:05"
