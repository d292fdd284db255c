"""The results table's schema: the columns evaluation writes (``vlscale.eval.results``) and the fitter reads
(``vlscale.scaling.results``, which also validates and selects). One row per evaluated checkpoint, long format, the
same columns as the paper's published table (``laion_scaling_results.csv``, see ``../shared/data/README.md``).

Required columns (``REQUIRED_COLUMNS``):

============================ =====================================================================================
``pretrain_dataset``         pre-training data, e.g. ``datacomp_1b``, ``relaion2b-en``
``lr_scheduler``             ``cosine``, ``const``, ...
``downstream_dataset``       the benchmark, e.g. ``imagenet1k``, ``mscoco_captions``
``metric``                   e.g. ``acc1``, ``image_retrieval_recall@5``, ``contrastive_loss``
``model_type``               model family: ``clip``, ``mammut``, ``siglip``, ``coca``
``model``                    architecture, e.g. ``ViT-B-32``
``samples_seen``             nominal samples seen (the scale of the run)
``gflops_per_sample``        forward GFLOPs per sample of image + text tower (the paper's model cost)
``compute_gflops``           ``gflops_per_sample * samples_seen`` (nominal)
``value``                    the metric; a fraction in [0, 1] for accuracies/recalls/mIoU, raw for losses
============================ =====================================================================================

Optional columns (``OPTIONAL_COLUMNS``): ``samples_seen_actual`` and ``compute_gflops_actual`` (what the runs really
saw; the paper's ``gflops_total``), ``lr``, ``global_batch_size``, ``warmup``, ``run`` and ``step``. Rows that differ
only in these run columns are different checkpoints; rows equal in all identity columns are duplicates.
"""

REQUIRED_COLUMNS = (
    "pretrain_dataset",
    "lr_scheduler",
    "downstream_dataset",
    "metric",
    "model_type",
    "model",
    "samples_seen",
    "gflops_per_sample",
    "compute_gflops",
    "value",
)
OPTIONAL_COLUMNS = (
    "samples_seen_actual",
    "compute_gflops_actual",
    "lr",
    "global_batch_size",
    "warmup",
    "run",
    "step",
)
TEXT_COLUMNS = ("pretrain_dataset", "lr_scheduler", "downstream_dataset", "metric", "model_type", "model")
# Columns that must be strictly positive numbers (compute axes and their factors).
POSITIVE_COLUMNS = ("samples_seen", "gflops_per_sample", "compute_gflops", "samples_seen_actual", "compute_gflops_actual")
NUMERIC_COLUMNS = POSITIVE_COLUMNS + ("value", "lr", "global_batch_size", "warmup", "step")
# Together these name one evaluated checkpoint; two rows equal in all of them are duplicates.
IDENTITY_COLUMNS = TEXT_COLUMNS + ("samples_seen", "lr", "global_batch_size", "warmup", "run", "step")
