"""The figure process of `vlscale fit`/`compare`: same files as in-process drawing, and a worker that fails or is
never used costs nothing but time."""

import subprocess
import sys

import pytest

from vlscale.scaling import plots, render_worker, report
from tests.scaling.test_report import small_report  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def in_process_png(small_report, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("in_process")
    plots.save_figure(plots.fit_figure(small_report), out)
    return (out / "fit.png").read_bytes()


def test_worker_draws_the_same_png_as_in_process(small_report, in_process_png, tmp_path):  # noqa: F811
    renderer = render_worker.Renderer.start()
    assert renderer is not None
    with render_worker.use(renderer):
        paths = report.save_fit(small_report, tmp_path)
        assert renderer.proc.returncode == 0  # the worker drew them, not the fallback
    assert (tmp_path / "fit.png").read_bytes() == in_process_png
    assert (tmp_path / "fit.pdf").read_bytes()[:4] == b"%PDF"
    assert {p.name for p in paths.values()} == {"fit.json", "fit.csv", "fit.tex", "fit.png", "fit.pdf"}
    assert renderer.job_file is None  # the job's temporary file is gone
    assert not renderer.submit([({}, tmp_path)])  # one job per worker: a second save draws in-process


def test_a_failing_worker_falls_back_to_drawing_here(small_report, in_process_png, tmp_path):  # noqa: F811
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(); sys.exit(3)"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with render_worker.use(render_worker.Renderer(proc)):
        report.save_fit(small_report, tmp_path)
    assert proc.returncode == 3
    assert (tmp_path / "fit.png").read_bytes() == in_process_png
    assert (tmp_path / "fit.pdf").read_bytes()[:4] == b"%PDF"


def test_a_worker_that_is_gone_before_the_figures_falls_back(small_report, in_process_png, tmp_path):  # noqa: F811
    proc = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    proc.wait()
    with render_worker.use(render_worker.Renderer(proc)):
        report.save_fit(small_report, tmp_path)
    assert (tmp_path / "fit.png").read_bytes() == in_process_png


def test_an_unused_worker_is_stopped_and_the_switch_turns_it_off(monkeypatch):
    renderer = render_worker.Renderer.start()
    with render_worker.use(renderer):
        assert render_worker.current() is renderer
    assert render_worker.current() is None
    assert renderer.proc.poll() is not None  # killed (or ended by its closed stdin), never left behind
    monkeypatch.setenv(render_worker.ENV_SWITCH, "0")
    assert render_worker.Renderer.start() is None
