"""The stages of a --multi_label run once its bottlenecks exist: train, report, export,
check (job.py runs the stages before, shared with single-label runs).

What a multi-label run writes:
- the frozen graph: `final_result` (--final_tensor_name) gives float32 [N, C]
  independent sigmoid scores in [0, 1]; the constant `final_result_thresholds`, float32
  [C], holds the thresholds (a label is predicted when its score is >= its threshold);
- the labels file, as for a single-label run;
- the SavedModel (--saved_model_dir): outputs 'prediction' (the scores) and
  'above_threshold' (bool [N, C]), the thresholds constant in its graph;
- the TFLite file: the output described as independent scores, the thresholds
  packed as thresholds.txt beside labels.txt (tflite_metadata);
- the ONNX file: the thresholds in its metadata_props 'thresholds' (onnx_export);
- the check of every exported file (artifacts.py), in the log and the JSON;
- the report page (--report_dir): the single-label page's sections with the
  multi-label numbers (mAP, exact match, thresholds, per-class AP), without
  confusion matrices or misclassified pictures;
- the --eval_report JSON: "multi_label": true, the thresholds and how they were chosen,
  and the validation and test reports of metrics.evaluate.
"""

import os

from absl import logging

from retrain_suite import dataset as dataset_lib
from retrain_suite import (
    evaluation,
    export,
    final_layer,
    picture_memo,
    report_content,
    report_page,
    run_exports,
)
from retrain_suite.images import pipelines as image_pipelines
from retrain_suite.multi_label import artifacts, metrics, thresholds, training
from retrain_suite.multi_label import labels as labels_lib

THRESHOLD_RULE = ("per class, the middle of the widest range of thresholds with the highest "
                  "F1 on the validation set; "
                  f"{thresholds.DEFAULT_THRESHOLD} for a class without validation images")


def scan(config):
    """The multi-label dataset and its image source (that no output lands on the CSV was
    checked with the other paths: output_paths.check_output_paths). -> (dataset.Dataset
    with label_sets, images.pipelines.ImageFiles)."""
    section = config.multi_label
    dataset = labels_lib.build_multi_label_dataset(
        config.data.image_dir,
        (config.data.validation_percentage, config.data.testing_percentage),
        section.labels_csv, section.labels_delimiter, exclude_dirs=[config.module.bottleneck_dir],
    )
    unlabelled = sum(1 for image in dataset.images if not dataset.label_sets[image.path])
    logging.info("Multi-label: %d distinct photos, %d labels, %d photos with none of them; "
                 "split by content.", len(dataset.images), len(dataset.labels), unlabelled)
    return dataset, image_pipelines.ImageFiles(dataset.full_path(i) for i in dataset.images)


def report_results(config, run, result):
    """Log the validation and test metrics; write the --eval_report JSON. -> the report."""
    reports = {}
    for split in (run.validation, run.testing):
        if len(split):
            reports[split.name] = metrics.evaluate(result.scores[split.name], split.targets,
                                                   result.thresholds, run.class_names)
            logging.info("%s", metrics.format_report(
                "Validation (thresholds chosen here)" if split.name == "validation" else "Test",
                reports[split.name]))
    if "testing" not in reports:
        logging.info("No testing images: the final test metrics are skipped.")
    report = {
        "multi_label": True,
        "labels": run.class_names,
        "thresholds": [float(t) for t in result.thresholds],
        "threshold_rule": THRESHOLD_RULE,
        "steps_trained": result.steps,
        "kept_step": result.kept_step,
        "images_per_class": [{"label": label, **by_split} for label, by_split
                             in dataset_lib.counts_by_class(run.dataset).items()],
        "images_without_labels": {
            split.name: int((split.targets.sum(axis=1) == 0).sum())
            for split in (run.training, run.validation, run.testing)},
        "testing": reports.get("testing"),
        "validation": reports.get("validation"),
    }
    if config.evaluation.eval_report:
        write_report(config.evaluation.eval_report, report)
        logging.info("Wrote evaluation report %s", config.evaluation.eval_report)
    return report


def write_report(path, report):
    export.write_output("eval_report", path, lambda: evaluation.write_report(path, report))


def train_and_export(config, run, timer):
    """Train, report, export and check a multi-label run (run: a run_data.PreparedRun with
    targets). -> the test mAP, or None without test images."""
    with timer.phase("training"):
        result = training.train(run, config.training, config.evaluation, config.outputs)
    with timer.phase("report (tables, JSON)"):
        report = report_results(config, run, result)
    spec = final_layer.LayerSpec(run.class_count, config.outputs.final_tensor_name,
                                 config.training.hidden_units, multi_label=True)
    run_exports.export_model(config, run, run_exports.ExportedLayer(
        spec, result.layer, thresholds=result.thresholds), timer)
    with timer.phase("check of the exported files"):
        checked = artifacts.check_run(config.outputs, run, result)
    if checked:
        set_name, files = checked
        logging.info("Exported files on the %s set (each with its own thresholds):\n%s",
                     set_name, artifacts.format_table(files, set_name))
        report["artifacts"] = {"set": set_name, "files": [f.as_dict() for f in files]}
    path = config.outputs.report_dir
    if path:
        with timer.phase("report page (report.html, results.csv, pictures)"):
            content = report_content.from_multi_label_run(config, run, result, report, checked,
                                                          timer)
            export.write_output("report_dir", path,
                                lambda: report_page.write_report(
                                    path, content, picture_memo.PictureMemo.of_run(
                                        config.module.bottleneck_dir, path)))
        logging.info("Wrote report page %s", os.path.join(path, report_page.PAGE))
    logging.info("Time by phase:\n%s", timer.table())
    if config.evaluation.eval_report:
        report["time"] = timer.as_dict()
        write_report(config.evaluation.eval_report, report)
    testing = report["testing"]
    return testing["mean_average_precision"] if testing else None


