"""Predict millions of photos: ``python -m carclf.batch MODEL INPUT OUTPUT`` (``carclf batch``).

On one machine it runs in one process without Ray; with ``--address`` (or ``--ray``) each part
of the job is a Ray task on the cluster (the ``batch`` extra: ``pip install carclf[batch]``).
Modules:

    inputs    the ``(id, path)`` rows behind a folder, zip, CSV or Parquet lists, streamed
    output    the output folder: manifest, parts, exactly-once rules, summary
    engine    decode (drafted uint8 pixels) and the model (ONNX Runtime without torch)
    local     the local runner: decode threads beside one ONNX Runtime session
    cluster   the Ray runner: a task per part, retried on a lost node
    pipeline  ``run_batch``: listing, runner, summary
"""
