"""The synthetic suite: the four zero-shot tasks and retrieval of ``vlscale.data.synth`` (no files needed).

Each run is scored on its own training distribution (the run's ``data.synth.knobs``), on eval splits disjoint
from the training stream. ``num_examples`` keeps evaluation of one checkpoint a small fraction of its training.
"""

import ml_collections

NUM_EXAMPLES = 1000  # per zero-shot task (class-balanced) and images for retrieval (5 captions each)


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "synth"
    tasks = [{"task": "zeroshot", "dataset": f"synth:{t}"} for t in ("colour", "shape", "count", "colour_shape")]
    tasks.append({"task": "retrieval", "dataset": "synth:retrieval"})
    for t in tasks:
        t["num_examples"] = NUM_EXAMPLES
    c.tasks = tasks
    return c
