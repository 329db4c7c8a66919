"""The whole retraining run from a config.RetrainConfig, in order.

check the configuration -> scan (or read TFRecords) and split -> compute or
reuse bottlenecks -> train the final layer (-> fine-tune the module with it
on images, keeping the better) -> report on the test and
validation sets -> export the frozen graph, labels (and SavedModel, TFLite
model, ONNX model) -> run each exported file on the test set (artifact_check) ->
write the report folder (report_page: report.html, results.csv, pictures). See
retrain.py's docstring for what each step means to the user.
"""

import contextlib
import dataclasses
import os
import random

import tensorflow as tf
from absl import logging

from retrain_suite import (
    artifact_check,
    atomic_files,
    check_memo,
    checked_images,
    evaluation,
    export,
    final_layer,
    fine_tuning,
    output_paths,
    phases,
    picture_memo,
    report_content,
    report_page,
    reporting,
    run_data,
    run_exports,
    tfrecords,
    training,
    tuning,
    tuning_summaries,
    vector_memory,
)
from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite import memo as memo_lib
from retrain_suite.bottleneck import compute
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.bottleneck import stores as stores_lib
from retrain_suite.images import pipelines as image_pipelines
from retrain_suite.multi_label import stages as multi_label_stages
from retrain_suite.multi_label import training as multi_label_training


def check_sets(dataset, config):
    """Raise UsageError when a flag needs validation or test images the dataset lacks."""
    has_validation = bool(dataset.in_split("validation"))
    if config.training.early_stopping_patience and not has_validation:
        raise config_lib.UsageError(
            "--early_stopping_patience needs validation images; raise "
            "--validation_percentage or drop the flag."
        )
    if config.fine_tuning.fine_tune_steps and not has_validation:
        raise config_lib.UsageError(
            "--fine_tune_steps needs validation images: fine-tuning is checked against the "
            "bottleneck-trained model on them so that it never makes the classifier worse; "
            "raise --validation_percentage or drop the flag."
        )
    if (config.evaluation.assert_accuracy_at_least is not None and not has_validation
            and not dataset.in_split("testing")):
        raise config_lib.UsageError(
            "--assert_accuracy_at_least needs test or validation images; raise "
            "--testing_percentage or drop the flag."
        )


def check_names_in_graphs(config):
    """Build the training and export graphs without training. -> (D, (height, width)).

    Raises UsageError when --final_tensor_name is already taken in either (by
    the module, `Placeholder`, an input of the training graph, ...).
    """
    name = config.outputs.final_tensor_name
    try:
        # One value of one image, two classes, seed 0: only the names matter here.
        multi_label = config.multi_label.multi_label
        build = multi_label_training.build_graph if multi_label else final_layer.build_training_graph
        spec = final_layer.LayerSpec(2, name, config.training.hidden_units, multi_label)
        build(1, spec, dataclasses.replace(config.training, train_batch_size=1, random_seed=0))
        dimension, input_size = export.check_final_tensor_name(
            config.module.tfhub_module, config.module.image_size, spec,
            memo_lib.Memo.of_cache(config.module.bottleneck_dir, "modules"),
        )
    except ValueError as e:
        raise config_lib.UsageError(
            f"--final_tensor_name={name}: {e}; choose another name, e.g. final_result."
        ) from e
    return dimension, input_size


def run_retraining(config):
    """The whole job from a config.RetrainConfig. -> final test accuracy (the test mAP
    with --multi_label, whose stages after the bottlenecks are multi_label.stages') or None.

    Raises AccuracyError, before anything is exported, when
    config.evaluation.assert_accuracy_at_least is set and not met.
    """
    timer = phases.PhaseTimer(phases.process_age())
    with timer.phase("flag and path checks"):
        config.validate()
        output_paths.check_output_paths(config.data, config.module, config.outputs,
                                        config.evaluation.eval_report,
                                        config.multi_label.labels_csv)
    return retrain_with_checked_flags(config, timer)


@contextlib.contextmanager
def checkpoint_lock(checkpoint):
    """Hold <checkpoint>.lock for the block, or raise UsageError if another run holds it."""
    if not output_paths.is_local(checkpoint):
        yield  # A remote filesystem has no fcntl locks.
        return
    try:
        with atomic_files.exclusive_lock(checkpoint + ".lock"):
            yield
    except atomic_files.Locked as e:  # Raised on entering only: the block never raises it.
        holder = f" (pid {e})" if str(e) else ""
        raise config_lib.UsageError(
            f"--checkpoint_path={checkpoint} is in use by another retrain.py run{holder}; "
            "wait for it to finish or give this run its own --checkpoint_path."
        ) from None
    except atomic_files.LockFileError as e:  # Also raised on entering only.
        raise config_lib.UsageError(
            f"--checkpoint_path={checkpoint}: {e} (it is left alone), or give this run "
            "another --checkpoint_path."
        ) from None


def retrain_with_checked_flags(config, timer):
    """run_retraining after the flag and path checks: scan, check, then train holding
    the checkpoint's lock. timer: the run's phases.PhaseTimer."""
    with timer.phase("scan and checks (the module loaded to check names, unless remembered)"):
        dataset, images, config = scan_and_check(config)
    with checkpoint_lock(config.outputs.checkpoint_path):
        return train_and_export(config, dataset, images, timer)


def scan_and_check(config):
    """Scan (or read the TFRecords) and check the sets, outputs, names and memory.
    -> (dataset, its image source, config): config with module.stream_bottlenecks set
    when the memory check chose streaming."""
    if config.training.class_weighting == "balanced" and config.training.sampling == "uniform":
        logging.warning(
            "--class_weighting=balanced with --sampling=uniform corrects for class sizes "
            "twice: small classes end up counting more than large ones. Use one of them."
        )
    if config.multi_label.multi_label:
        dataset, images = multi_label_stages.scan(config)
    elif config.data.tfrecord_dir:
        dataset, images = tfrecords.read_tfrecords(config.data.tfrecord_dir)
    else:
        dataset = dataset_lib.build_dataset(
            config.data.image_dir, config.data.validation_percentage,
            config.data.testing_percentage, exclude_dirs=[config.module.bottleneck_dir],
            split_by=config.data.split_by,
        )
        images = image_pipelines.ImageFiles(dataset.full_path(image) for image in dataset.images)
    logging.info("Found %d images in %d classes.", len(dataset.images), len(dataset.labels))
    check_sets(dataset, config)
    outputs = [path for _, path in output_paths.outputs_of(config.outputs, config.evaluation.eval_report)]
    output_paths.check_output_locations(outputs + [os.path.join(config.module.bottleneck_dir, "x")])
    dimension, input_size = check_names_in_graphs(config)
    if config.fine_tuning.fine_tune_steps:
        module_lib.check_fine_tunable(config.module.tfhub_module, config.module.image_size)
    if vector_memory.choose(config, dimension, len(dataset.labels), len(dataset.images),
                            input_size, len(kept_rows(config, dataset))):
        config = dataclasses.replace(
            config, module=dataclasses.replace(config.module, stream_bottlenecks=True))
    return dataset, images, config


def train_and_export(config, dataset, images, timer):
    """Bottlenecks, training, evaluation and export, once every check has passed.

    dataset: the scan; images: its image source (image i of the dataset is row i);
    timer: the run's phases.PhaseTimer, whose table ends the log (and the report).
    """
    if config.training.random_seed is None:
        config = config.with_seed(random.SystemRandom().randrange(2**31))
        logging.info("Random seed %d (pass --random_seed=%d to repeat this run).",
                     config.training.random_seed, config.training.random_seed)
    with timer.phase("bottlenecks (module load, cache, forward passes)"):
        run = prepare_run(config, dataset, images)
        export.remember_final_tensor_name_check(
            config.module.tfhub_module, config.module.image_size,
            final_layer.LayerSpec(2, config.outputs.final_tensor_name,
                                  config.training.hidden_units, config.multi_label.multi_label),
            memo_lib.Memo.of_cache(config.module.bottleneck_dir, "modules"))
    if run.multi_label:
        return multi_label_stages.train_and_export(config, run, timer)
    calibration = run_exports.calibration_ahead(config, run)  # decoded while training runs
    model = train_model(config, run, timer)
    with timer.phase("report (tables, JSON)"):
        report, reports, accuracy = report_results(config, run, model)
    checked_split = run.testing if len(run.testing) else run.validation
    ahead = checked_images.DecodedAhead(run, checked_split.rows.tolist(),
                                        artifact_check.BATCH_SIZE)
    run_exports.export_model(config, run, run_exports.ExportedLayer(
        model.spec, model.result.layer, model.module_values), timer, ahead, calibration)
    with timer.phase("check of the exported files"):
        # Earlier checks are remembered in the bottleneck cache's folder, when it is local.
        bottleneck_dir = config.module.bottleneck_dir
        memo = check_memo.CheckMemo(bottleneck_dir if output_paths.is_local(bottleneck_dir)
                                    else None)
        # The pictures shown later (TensorBoard's, the report page's) are among the
        # images the check decodes: kept as it decodes them, not decoded again.
        split = "testing" if len(run.testing) else "validation"
        shown = reporting.shown_rows(run, reports.get(split), split,
                                     report_content.MAX_THUMBNAILS)
        checked = artifact_check.check_run(config.outputs, run, model.result, memo, shown,
                                           ahead)
        # The pixels kept or decoded ahead for the check and calibration, used: let go.
        run.decoded.clear()
        ahead = calibration = None
    with timer.phase("TensorBoard's evaluation pictures"):
        reporting.write_evaluation_summaries(run, reports, config.outputs.summaries_dir,
                                             model.result.steps)
    if checked:
        set_name, artifacts = checked
        logging.info("Exported files on the %s set:\n%s", set_name,
                     artifact_check.format_table(artifacts, set_name))
        report["artifacts"] = {"set": set_name, "files": [a.as_dict() for a in artifacts]}
    if config.outputs.report_dir:
        with timer.phase("report page (report.html, results.csv, pictures)"):
            write_report_page(config, run, model, report, checked, timer)
    logging.info("Time by phase:\n%s", timer.table())
    if config.evaluation.eval_report:
        report["time"] = timer.as_dict()
        write_report(config.evaluation.eval_report, report)
    if checked and config.evaluation.assert_accuracy_at_least is not None:
        artifact_check.check_accuracy(
            artifacts, config.evaluation.assert_accuracy_at_least, set_name
        )
    return accuracy


def prepare_run(config, dataset, images):
    """Compute (or reuse) the bottlenecks; log the copies and counts. -> run_data.PreparedRun."""
    precision = module_lib.mixed_precision_type() if config.module.mixed_precision else "float32"
    bottlenecks = compute.compute_bottlenecks(
        images, config.module.tfhub_module, config.module.bottleneck_dir,
        config.module.image_size, config.module.bottleneck_batch_size, config.data.max_image_pixels,
        precision=precision,
        # Streamed: the vectors go to (or come from) the packed store, never all in memory.
        store=stores_lib.StoreOptions(kind=config.module.bottleneck_store,
                                      hold_vectors=not config.module.stream_bottlenecks),
        keep_pixels=kept_rows(config, dataset),
    )
    run = run_data.prepare(dataset, images, bottlenecks, config.data.max_image_pixels)
    if bottlenecks.skipped:
        check_sets(run.dataset, config)
    log_copies(run.dataset, [run.contents[i.path] for i in run.dataset.images])
    # Past dataset_lib.MAX_CLASSES_LISTED classes the log shows the smallest; the
    # report's images_per_class holds every class.
    full_counts = ("every class's counts are in the --eval_report JSON"
                   if config.evaluation.eval_report else "--eval_report writes every class's counts")
    dataset_lib.warn_about_small_classes(run.dataset, full_counts)
    if not len(run.training):
        raise config_lib.UsageError(
            "No training images left; lower the validation and testing percentages.")
    logging.info("Images per class and set:\n%s",
                 dataset_lib.format_count_table(run.dataset, (), full_counts))
    return run


def kept_rows(config, dataset):
    """The rows whose pixels the bottleneck pass keeps for the stages after training
    (checked_images.wanted_rows): the check's images, and the int8 calibration images
    when a new int8 TFLite file is asked for. Nothing for a multi-label run, whose stages
    decode their own, for a fine-tuning run (whose module takes the memory: the pixels
    would be held through it; it decodes them as before), or when the module's input size
    is not known yet."""
    shape = module_lib.known_shape(config.module.tfhub_module, config.module.image_size)
    if config.multi_label.multi_label or config.fine_tuning.fine_tune_steps or shape is None:
        return ()
    return checked_images.wanted_rows(dataset, shape[:2], config.training.random_seed,
                                      run_exports.new_int8_file(config.outputs))


def train_model(config, run, timer):
    """(Tune the final layer's settings,) train the final layer (then fine-tune the module
    with it). -> run_data.TrainedModel."""
    search = None
    if config.tuning.on:
        with timer.phase("tuning (cross-validation of the final layer's settings)"):
            search = tuning.tune(run, config.training, config.tuning)
            if config.outputs.summaries_dir:
                tuning_summaries.write_trials(config.outputs.summaries_dir, search)
        # From here on the run is the chosen setting's: training, fine-tuning, export.
        config = dataclasses.replace(config, training=search.chosen_training)
    spec = final_layer.LayerSpec(run.class_count, config.outputs.final_tensor_name,
                                 config.training.hidden_units)

    def export_intermediate(step, layer):
        path = os.path.join(config.outputs.intermediate_output_graphs_dir, f"intermediate_{step}.pb")
        export_graph(config, ("intermediate_output_graphs_dir", path), spec, layer)
        logging.info("Wrote intermediate graph %s", path)

    distortions = config_lib.distortions_from(config)
    hooks = training.Hooks(
        export_intermediate=export_intermediate,
        batch_source=distorted_batch_source(config, run) if distortions.any() else None,
    )
    with timer.phase("training"):
        result = training.train(run, config.training, config.evaluation, config.outputs, hooks)
    if not config.fine_tuning.fine_tune_steps:
        return run_data.TrainedModel(spec, result, search=search)
    with timer.phase("fine-tuning"):
        tuned = fine_tuning.fine_tune(config, run, result)
    # What is reported, checked and exported from here on is the kept whole model,
    # measured on images: the cached bottlenecks no longer describe a tuned module.
    result = dataclasses.replace(result, layer=tuned.layer, predictions=tuned.predictions)
    return run_data.TrainedModel(spec, result, tuned, search)


def report_results(config, run, model):
    """Log the test accuracy and the evaluation tables and write the --eval_report JSON
    (TensorBoard's pictures come after the check: reporting.write_evaluation_summaries);
    raise AccuracyError below --assert_accuracy_at_least.

    -> (the report as written to JSON, reporting.evaluation_reports' reports, final test
    accuracy or None)."""
    result = model.result
    accuracy = reporting.report_test_results(
        run, result, config.evaluation.print_misclassified_test_images
    )
    reports = reporting.evaluation_reports(run, result)
    reporting.log_reports(reports, run.class_names)
    report = {
        "labels": run.class_names,
        "steps_trained": result.steps,
        "kept_step": result.kept_step,
        "images_per_class": [{"label": label, **by_split}
                             for label, by_split in dataset_lib.counts_by_class(run.dataset).items()],
        "testing": reports.get("testing"),
        "validation": reports.get("validation"),
    }
    if model.search is not None:
        report["tuning"] = model.search.as_dict()
    if model.tuned is not None:
        report["fine_tuning"] = {"steps_trained": model.tuned.steps,
                                 "kept_step": model.tuned.kept_step,
                                 "diverged": model.tuned.diverged}
        versus = model.tuned.versus_start
        if versus is not None:
            report["fine_tuning"]["versus_bottleneck_trained"] = {
                "gain": versus.gain, "standard_error": versus.standard_error,
                "margin": versus.margin, "fine_tuned_kept": versus.wins, "images": versus.images}
    if config.evaluation.eval_report:
        write_report(config.evaluation.eval_report, report)
        logging.info("Wrote evaluation report %s", config.evaluation.eval_report)
    if config.evaluation.assert_accuracy_at_least is not None:
        try:
            reporting.check_accuracy(reports, config.evaluation.assert_accuracy_at_least)
        except reporting.AccuracyError:  # the run stops here: its pictures still show why
            reporting.write_evaluation_summaries(run, reports, config.outputs.summaries_dir,
                                                 result.steps)
            raise
    return report, reports, accuracy


def write_report_page(config, run, model, report, checked, timer):
    """Write the --report_dir folder (report_page) of the finished run; arguments as
    report_content.from_run's."""
    path = config.outputs.report_dir
    content = report_content.from_run(config, run, model, report, checked, timer)
    export.write_output("report_dir", path,
                        lambda: report_page.write_report(path, content, picture_memo.PictureMemo.of_run(
                            config.module.bottleneck_dir, path)))
    logging.info("Wrote report page %s", os.path.join(path, report_page.PAGE))


def write_report(path, report):
    export.write_output("eval_report", path, lambda: evaluation.write_report(path, report))


def export_graph(config, output, spec, layer, module_values=None):
    """Write the frozen graph of the layer (spec, {variable name: ndarray}) on the module
    (module_values: fine-tuned, or None as loaded) to output, a (flag, path)."""
    flag, path = output
    graph_def = export.frozen_graph(
        config.module.tfhub_module, config.module.image_size, spec, layer, module_values,
    )
    export.write_output(flag, path, lambda: export.write_frozen_graph(graph_def, path))


def log_copies(dataset, contents):
    """Log the copies report; a warning when copies cross sets or classes."""
    copies = dataset_lib.find_copies(dataset.images, contents)
    log = logging.warning if copies.across_sets or copies.across_classes else logging.info
    log("%s", dataset_lib.format_copies(copies))


def distorted_batch_source(config, run):
    """A batch_source for final_layer.build_training_graph: run's training images,
    distorted as config.distortions says, through the module."""

    def build():
        module = module_lib.load(config.module.tfhub_module, config.module.image_size)
        spec = image_pipelines.ImageBatchSpec(
            module.height, module.width, config.training.train_batch_size,
            config_lib.distortions_from(config), config.training.random_seed,
            config.data.max_image_pixels,
        )
        batches = image_pipelines.distorted_batches(
            run.source, run.training.rows.tolist(), run.training.labels.tolist(), spec)
        iterator = tf.compat.v1.data.make_initializable_iterator(batches)
        pixels, batch_labels = iterator.get_next()
        return module(pixels), batch_labels, iterator.initializer

    return build
