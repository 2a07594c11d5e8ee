"""Inspection app: look at a dataset before training on it.

* :mod:`carclf.inspect.report`: the dataset report (``report.html`` + ``report.json``), also
  written into every training run dir by the :class:`carclf.inspect.callback.DataReport` callback;
* :mod:`carclf.inspect.doctor`: the label doctor (likely mislabelled photos, ``label_issues.csv``;
  its model in :mod:`carclf.inspect.doctor_oof`), and :mod:`carclf.inspect.review`, the page to
  keep, relabel or exclude each flag (``decisions.csv``);
* :mod:`carclf.inspect.duplicates`: exact and near duplicates, inside and across splits.

    python -m carclf.inspect.report PATH [--out DIR] [--doctor]
    python -m carclf.inspect.doctor PATH [--out DIR] [--folds 5] [--review]
"""
