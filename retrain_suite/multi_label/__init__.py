"""Photos with several labels (--multi_label): one example per distinct photo, a
multi-hot label vector, sigmoid outputs, one threshold per class.

Rooms:
  options.py     MultiLabelConfig (the flags' section) and the refusals of flags that
                 have no multi-label meaning
  labels.py      where the labels come from: a CSV file, or the same photo filed in
                 several class folders; build_multi_label_dataset (scan, then split by
                 content)
  thresholds.py  the per-class threshold rule, chosen on validation
  metrics.py     per-class precision, recall and F1 at the thresholds, average
                 precision and its mean (mAP), the exact-match ratio; their log tables
  training.py    the sigmoid layer's training graph and loop on cached bottlenecks
  artifacts.py   the check of the exported files, each run with its own thresholds
  stages.py      the run's multi-label stages: train, report, export, check, report page

The data model is the single-label one (dataset.Dataset, run_data.PreparedRun) with
the label sets beside it: Dataset.label_sets and Split.targets.
"""
