r"""Fine-tuning: after the final layer has trained on bottlenecks, train the module too.

Transfer learning trains only the new layer, on features the frozen module
computed once (the bottleneck cache). Fine-tuning then continues for
--fine_tune_steps steps on images: each step decodes (and distorts, with the
distortion flags) --fine_tune_batch_size training images through the shared
preprocessing function, runs them through the module and the layer, and
updates the module's trainable variables (TF Hub's Reusable SavedModel API)
and the layer's, nothing else. The loss is the final layer's training loss
(class weights, label smoothing, L2) plus the module's own regularization
losses.

It is easy to make a classifier worse this way (a learning rate too high
destroys the module's features in a few steps), so the run never hands back
a worse one than it started from: the whole model is evaluated on every
validation image at step 0 (the bottleneck-trained model) and every
--fine_tune_eval_interval steps, and with --keep_best the best of these
(scored as training.BestLayer scores: whole-validation accuracy, ties by lower
cross entropy) is the candidate. The best of several evaluations on the same
images is partly the luckiest, so the candidate replaces the
bottleneck-trained model only when it beats it on the validation images by
more than the noise margin of selection.py (two standard errors of the
paired per-image difference), the rule tuning chooses by. A step whose loss
is not finite ends fine-tuning, and the best evaluated model (at worst the
bottleneck-trained one) is the candidate.

Each evaluation also writes the fine-tuning checkpoint,
<--checkpoint_path>.fine_tuning: every variable of the graph (module, layer,
optimizer slots, step) and the best model so far, written whole under a
temporary name and renamed. A run with the same flags and data resumes from
it; batches are a function of (seed, step) (image_pipelines.fine_tuning_batches),
so the result is the one an uninterrupted run gives. A checkpoint of another
configuration or dataset is ignored, with a warning (fine_tuning_checkpoint).
"""

import dataclasses
import math
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from retrain_suite import config as config_lib
from retrain_suite import final_layer, run_data, selection, training
from retrain_suite import fine_tuning_checkpoint as checkpoint
from retrain_suite.bottleneck import compute
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.images import pipelines as image_pipelines

# The TensorBoard run (a folder of --summaries_dir) of the fine-tuning curves.
TENSORBOARD_RUN = "fine_tuning"


@dataclasses.dataclass
class FineTuningResult:
    steps: int  # fine-tuning steps taken
    kept_step: int  # 0: the bottleneck-trained model was kept
    diverged: bool  # a step's loss (or an evaluation's cross entropy) was not finite
    layer: dict  # {variable name: ndarray}: the kept final layer
    # [ndarray] in the module's `variables` order (export.frozen_graph), or None
    # when the kept model is the bottleneck-trained one (the module unchanged).
    module_values: list
    # As training.TrainingResult's: {split name: run_data.Predictions}, measured by the
    # kept whole model on images.
    predictions: dict
    # [training.EvaluationPoint]: every whole-validation evaluation this process made,
    # in step order (step 0 first; a resumed run's start at the step it resumed from).
    history: list = dataclasses.field(default_factory=list)
    # selection.Comparison of the best fine-tuned evaluation against the
    # bottleneck-trained model on the validation images; None when none was chosen.
    versus_start: object = None


@dataclasses.dataclass
class FineTuningGraph:
    graph: tf.Graph
    module: module_lib.FeatureVectorModule
    iterator_init: tf.Operation
    train_step: tf.Operation
    loss: tf.Tensor
    step: tf.Variable
    evaluations: dict  # {split: (iterator initializer, (indices int64 [B], probabilities [B, C]))}
    layer_variables: list
    assign: tf.Operation  # sets every variable of `every` from `values`
    values: dict  # {variable name: placeholder}
    every: list  # every global variable of the graph: what the checkpoint holds


def build_graph(config, run, eval_rows, first_step, loss_settings):
    """The fine-tuning graph: image batches -> module -> final layer -> loss -> update.

    run: the run_data.PreparedRun (its training images are the batches);
    eval_rows: {split: rows of the run's image source} of the images evaluated
    whole; first_step: the step the batches start at
    (image_pipelines.fine_tuning_batches).
    """
    tuning = config.fine_tuning
    class_count = run.class_count
    seed = config.training.random_seed
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        module = module_lib.load(config.module.tfhub_module, config.module.image_size)
        spec = image_pipelines.ImageBatchSpec(
            module.height, module.width, tuning.fine_tune_batch_size,
            config_lib.distortions_from(config), seed, config.data.max_image_pixels,
        )
        batches = image_pipelines.fine_tuning_batches(
            run.source, run.training.rows.tolist(), run.training.labels.tolist(), spec, first_step)
        iterator = tf.compat.v1.data.make_initializable_iterator(batches)
        pixels, labels = iterator.get_next()
        step = tf.compat.v1.get_variable(
            "fine_tuning_steps_taken", [], tf.int64, tf.compat.v1.zeros_initializer(),
            trainable=False,
        )

        def dropout(features):  # drawn from (seed, step), as in final_layer
            return tf.nn.experimental.stateless_dropout(
                features, rate=config.training.dropout,
                seed=tf.stack([tf.constant(seed, tf.int64), step.read_value()]),
            )
        features = module(pixels, training=tuning.fine_tune_batch_norm)
        logits = final_layer.layer_logits(
            features, class_count, config.training.hidden_units,
            dropout if config.training.dropout > 0 else None,
        )
        layer_variables = final_layer.final_layer_variables(graph)
        loss = final_layer.training_loss(logits, labels, class_count, loss_settings, graph)
        regularization = module.regularization_losses()
        if regularization:
            loss = loss + tf.add_n(regularization)
        optimizer = final_layer.make_optimizer(
            tuning.fine_tune_optimizer, config_lib.fine_tune_learning_rate(config)
        )
        # Only the module's trainable variables and the layer learn.
        update = optimizer.minimize(loss, var_list=module.trainable_variables + layer_variables)
        with tf.control_dependencies([update]):
            train_step = step.assign_add(1).op
        evaluations = {}
        for split, rows in eval_rows.items():
            decoded = run.image_batches(rows, tuning.fine_tune_batch_size)
            eval_iterator = tf.compat.v1.data.make_initializable_iterator(decoded)
            indices, _, eval_pixels = eval_iterator.get_next()
            eval_logits = final_layer.layer_logits(
                module(eval_pixels, training=False), class_count, config.training.hidden_units
            )
            evaluations[split] = (eval_iterator.initializer, (indices, tf.nn.softmax(eval_logits)))
        every = tf.compat.v1.global_variables()
        values = {v.op.name: tf.compat.v1.placeholder(v.dtype.base_dtype, v.shape) for v in every}
        assign = tf.group(*(v.assign(values[v.op.name]) for v in every))
    return FineTuningGraph(graph, module, iterator.initializer, train_step, loss, step, evaluations,
                  layer_variables, assign, values, every)


def _evaluate(sess, g, split, rows, truth):
    """Run the whole model on the images at rows. -> ((predictions int64 [n],
    confidences float32 [n]: the probability of each predicted class), accuracy,
    mean cross entropy), row for row; a row whose image could not be decoded is
    predicted as class 0 with a NaN confidence, and makes the cross entropy NaN.

    Only these per-image values are kept from each batch's probabilities [B, C]:
    the whole [n, C] would grow with images times classes.
    """
    init, fetches = g.evaluations[split]
    sess.run(init)
    position_of = {row: n for n, row in enumerate(rows)}
    predictions = np.zeros(len(rows), np.int64)
    confidences = np.full(len(rows), np.nan, np.float32)
    chosen = np.full(len(rows), np.nan, np.float32)  # the probability of the true class
    finite = np.zeros(len(rows), bool)
    for indices, batch in image_pipelines.each_batch(sess, fetches):
        at = np.array([position_of[i] for i in indices.tolist()], np.int64)
        predicted = np.argmax(batch, axis=1)
        predictions[at] = predicted
        confidences[at] = batch[np.arange(len(at)), predicted]
        chosen[at] = batch[np.arange(len(at)), truth[at]]
        finite[at] = np.all(np.isfinite(batch), axis=1)
    accuracy = float(np.mean(predictions == truth))
    cross_entropy = float(np.mean(-np.log(np.maximum(chosen, 1e-30))))
    if not np.all(finite):
        cross_entropy = math.nan
    return (predictions, confidences), accuracy, cross_entropy


def fine_tune(config, run, result):
    """Fine-tune the module and the bottleneck-trained layer. -> FineTuningResult.

    config: the whole config.RetrainConfig (every section but evaluation
    shapes fine-tuning: its own, the layer's training, distortions, the
    module, the image size limit, the checkpoint and TensorBoard paths); run:
    the run_data.PreparedRun (validation images needed); result: the
    training.TrainingResult of the bottleneck phase (its layer is the start,
    its test sample is measured again).
    """
    tuning = config.fine_tuning
    steps, interval = tuning.fine_tune_steps, tuning.fine_tune_eval_interval
    val_y = run.validation.labels
    test_positions = (result.predictions["testing"].positions if "testing" in result.predictions
                      else np.zeros([0], np.int64))
    eval_rows = {"validation": run.validation.rows.tolist()}
    if len(test_positions):
        eval_rows["testing"] = run.testing.rows[test_positions].tolist()
    fingerprint = checkpoint.fingerprint(config, run, result.layer)
    path = checkpoint.checkpoint_file(config.outputs.checkpoint_path)
    resumed = checkpoint.read(path, fingerprint)
    first_step = resumed[0] if resumed else 0
    loss_settings = training.loss_settings(config.training, run.training.labels, run.class_count)
    g = build_graph(config, run, eval_rows, first_step, loss_settings)
    learning_rate = config_lib.fine_tune_learning_rate(config)
    logging.info(
        "Fine-tuning %s for %d steps (%d images a step, %s, learning rate %g, batch "
        "normalization %s) and evaluating the whole model on %d validation images every %d "
        "steps.", config.module.tfhub_module, steps, tuning.fine_tune_batch_size,
        tuning.fine_tune_optimizer, learning_rate,
        "trained" if tuning.fine_tune_batch_norm else "in inference mode", len(val_y), interval)
    with g.graph.as_default():  # FileWriter refuses to run eagerly.
        writer = tf.compat.v1.summary.FileWriter(
            os.path.join(config.outputs.summaries_dir, TENSORBOARD_RUN), filename_suffix=".fine_tuning"
        )
    with writer, tf.compat.v1.Session(graph=g.graph, config=module_lib.session_config()) as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        start_values = sess.run(g.every)  # the module as loaded; the layer set below
        by_name = dict(zip((v.op.name for v in g.every), start_values))
        by_name.update(result.layer)
        start_values = {v.op.name: by_name[v.op.name] for v in g.every}

        def load(values):
            sess.run(g.assign, {g.values[name]: value for name, value in values.items()})

        def snapshot():
            return dict(zip((v.op.name for v in g.every), sess.run(g.every)))

        history, start_correct, best_correct = [], None, None
        if resumed:
            _, current, best, start_score = resumed
            if set(current) != set(start_values) or any(
                    current[n].shape != start_values[n].shape for n in current):
                raise config_lib.UsageError(
                    f"The fine-tuning checkpoint {path} does not fit this run's graph though "
                    "it was written for the same flags and data; delete it to fine-tune "
                    "from step 0.")
            load(current)
        else:
            load(start_values)
            evaluated = _evaluate(sess, g, "validation", eval_rows["validation"], val_y)
            _, accuracy, cross_entropy = evaluated
            start_correct = _correct(evaluated, val_y)
            best = checkpoint.Best(0, accuracy, cross_entropy)
            history.append(training.EvaluationPoint(0, None, None, None, accuracy, cross_entropy,
                                                    len(val_y)))
            _write_scalars(writer, 0, validation_accuracy=accuracy,
                           validation_cross_entropy=cross_entropy)
            start_score = (accuracy, cross_entropy)
            logging.info(
                "Fine-tuning step 0/%d (the bottleneck-trained model): validation accuracy "
                "%.1f%%, cross entropy %.4f (all %d validation images).",
                steps, 100 * accuracy, cross_entropy, len(val_y))
            if steps:
                checkpoint.write(path, fingerprint, 0, snapshot(), best, start_score)
        sess.run(g.iterator_init)
        step, diverged = first_step, False
        progress = compute.Progress((steps - first_step) * tuning.fine_tune_batch_size,
                                    "Fine-tuning")
        stopped_early = best.evaluations_without_improvement >= (
            config.training.early_stopping_patience or math.inf)
        started = time.monotonic()
        while step < steps and not stopped_early:
            _, loss = sess.run([g.train_step, g.loss])
            step += 1
            progress.update(tuning.fine_tune_batch_size)
            if not math.isfinite(loss):
                logging.warning("Fine-tuning diverged at step %d: the loss is %s.", step, loss)
                diverged = True
                break
            if step % interval and step != steps:
                continue
            evaluated = _evaluate(sess, g, "validation", eval_rows["validation"], val_y)
            _, accuracy, cross_entropy = evaluated
            _write_scalars(writer, step, loss=loss, validation_accuracy=accuracy,
                           validation_cross_entropy=cross_entropy)
            history.append(training.EvaluationPoint(step, None, None, float(loss), accuracy,
                                                    cross_entropy, len(val_y)))
            message = (f"Fine-tuning step {step}/{steps}: loss {loss:.4f}, validation accuracy "
                       f"{100 * accuracy:.1f}%, cross entropy {cross_entropy:.4f}")
            if not math.isfinite(cross_entropy):
                logging.warning("%s: fine-tuning diverged.", message)
                diverged = True
                break
            current = snapshot()
            if best.better(accuracy, cross_entropy):
                best = checkpoint.Best(step, accuracy, cross_entropy, current)
                best_correct = _correct(evaluated, val_y)
                message += " (best so far)"
            else:
                best.evaluations_without_improvement += 1
            logging.info("%s", message)
            checkpoint.write(path, fingerprint, step, current, best, start_score)
            patience = config.training.early_stopping_patience
            if patience and best.evaluations_without_improvement >= patience:
                logging.info("Early stopping of fine-tuning at step %d: no better validation "
                             "score in %d evaluations since step %d.", step, patience, best.step)
                stopped_early = True
        elapsed = time.monotonic() - started
        if step > first_step:
            logging.info("Fine-tuned %d steps in %.1fs (%.1f images/s).", step - first_step,
                         elapsed, (step - first_step) * tuning.fine_tune_batch_size / elapsed)
        kept_step = step
        if config.training.keep_best or diverged:
            # Never the diverged state: at worst the bottleneck-trained model.
            kept_step = best.step
            load(best.values if best.values is not None else start_values)
        versus_start = None
        if kept_step and (config.training.keep_best or diverged):
            # The best of several evaluations on the same images: it replaces the
            # bottleneck-trained model only by more than the noise (selection.py).
            # Each side's answers as its evaluation gave them; what another process
            # evaluated before a resume is evaluated again.
            if best_correct is None:
                best_correct = _correct(
                    _evaluate(sess, g, "validation", eval_rows["validation"], val_y), val_y)
            if start_correct is None:
                load(start_values)
                start_correct = _correct(
                    _evaluate(sess, g, "validation", eval_rows["validation"], val_y), val_y)
            versus_start = selection.compare(best_correct, start_correct)
            kept_step = kept_step if versus_start.wins else 0
            load(best.values if kept_step else start_values)
            logging.info(
                "The fine-tuned model of step %d against the bottleneck-trained model on the "
                "validation images: %s, so the %s model is kept (the rule: %s).", best.step,
                versus_start.describe(), "fine-tuned" if kept_step else "bottleneck-trained",
                selection.RULE)
        predictions, scores = {}, {}
        for split, positions in ((run.validation, np.arange(len(val_y))),
                                 (run.testing, test_positions)):
            if split.name in eval_rows:
                (classes, confidences), *scores[split.name] = _evaluate(
                    sess, g, split.name, eval_rows[split.name], split.labels[positions])
                predictions[split.name] = run_data.Predictions(positions, classes, confidences)
        _log_choice(kept_step, step, scores["validation"], start_score, diverged, len(val_y))
        kept = snapshot()
    module_names = [v.op.name for v in g.module.variables]
    return FineTuningResult(
        steps=step, kept_step=kept_step, diverged=diverged,
        layer={v.op.name: kept[v.op.name] for v in g.layer_variables},
        module_values=[kept[n] for n in module_names] if kept_step else None,
        predictions=predictions, history=history, versus_start=versus_start,
    )


def _correct(evaluated, truth):
    """bool [n]: the images an _evaluate answer got right (never one it could not decode)."""
    (predicted, confidences), _, _ = evaluated
    return (predicted == truth) & np.isfinite(confidences)


def _write_scalars(writer, step, **values):
    """One TensorBoard point per value (a float) at fine-tuning step `step`."""
    writer.add_summary(tf.compat.v1.Summary(value=[
        tf.compat.v1.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in values.items()
    ]), step)


def _log_choice(kept_step, steps, kept_score, start_score, diverged, count):
    accuracy, cross_entropy = kept_score
    if kept_step == 0 and diverged:
        logging.warning(
            "Fine-tuning diverged: exporting the bottleneck-trained model (module unchanged), "
            "validation accuracy %.1f%%, cross entropy %.4f (all %d validation images). Lower "
            "--fine_tune_learning_rate.", 100 * accuracy, cross_entropy, count)
        return
    if kept_step == 0:
        logging.info(
            "Keeping the bottleneck-trained model (module unchanged): no fine-tuning step scored "
            "better on the validation images by more than the margin. Validation accuracy "
            "%.1f%%, cross entropy %.4f (all %d validation images).", 100 * accuracy, cross_entropy, count)
        return
    logging.info(
        "Keeping the fine-tuned model from fine-tuning step %d of %d: validation accuracy "
        "%.1f%% (%+.1f points over the bottleneck-trained model's %.1f%%), cross entropy %.4f "
        "(was %.4f) (all %d validation images).", kept_step, steps, 100 * accuracy,
        100 * (accuracy - start_score[0]), 100 * start_score[0], cross_entropy, start_score[1],
        count)
