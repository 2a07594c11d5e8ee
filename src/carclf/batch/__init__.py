"""Predict millions of photos with Ray Data: ``python -m carclf.batch MODEL INPUT OUTPUT``.

Needs the ``batch`` extra (``pip install carclf[batch]``: Ray Data, pyarrow). Modules:

    inputs    the ``(id, path)`` rows behind a folder, zip, CSV or Parquet lists of paths
    stages    ``decode`` (CPU tasks) and ``Predictor`` (actor pool) of the pipeline
    output    the output folder: manifest, input list, checkpoint, summary
    pipeline  ``run_batch``: the Ray Data pipeline, local or on a cluster
"""
