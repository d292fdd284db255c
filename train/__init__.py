"""vlscale.train: the sharded trainer (``run``), its step, optimizer, checkpoints and logging.

``from vlscale import train; train.run(config, workdir)``; ``vlscale train --help`` on the command line.
"""


def run(config, workdir, **kwargs):
    """Trains or resumes one run; see ``vlscale.train.loop.run``."""
    from vlscale.train.loop import run as _run

    return _run(config, workdir, **kwargs)
