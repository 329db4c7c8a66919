r"""What a trained classifier gets right and wrong, in numbers, tables and pictures.

From the true and predicted class of each evaluated image this module makes:

- `evaluate`: a report (dict, JSON-ready) with the overall accuracy, per-class
  precision, recall, F1 and support, and the confusion matrix;
- `format_report`: the same as aligned text tables for the log;
- `confusion_matrix_png` and `misclassified_grid_png`: pictures for TensorBoard,
  the grid showing `mistakes_to_show` (every true class in turn, the most
  confident mistakes first);
- `evaluation_summary`: a TensorBoard Summary proto with those pictures and the
  per-class accuracy scalars, written by a tf.compat.v1 FileWriter.

Conventions: the confusion matrix is int [C, C] with rows the true class and
columns the predicted class, both in label order. A ratio whose denominator is
zero (precision of a class never predicted, recall of a class with no images)
is None in the report (null in JSON) and "-" in the tables, not a made-up 0.
"""

import io
import json
import math

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from retrain_suite import atomic_files, input_pipeline

MAX_MISCLASSIFIED_SHOWN = 16


TILE = 160  # pixels, side of one image in the misclassified grid


CAPTION = 36  # pixels, height of the caption band under each tile


GAP = 4  # pixels between tiles


def confusion_matrix(truth, predictions, class_count):
    """truth, predictions int [N] class indices -> int64 [C, C], rows true, columns predicted."""
    matrix = np.zeros([class_count, class_count], np.int64)
    np.add.at(matrix, (np.asarray(truth, np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def _ratio(numerator, denominator):
    return float(numerator) / float(denominator) if denominator else None


def evaluate(truth, predictions, labels):
    """The report of one set: {'count', 'accuracy', 'classes', 'macro_avg', 'confusion_matrix'}.

    truth, predictions: int [N] class indices; labels: [C] class names.
    classes: one {'label', 'precision', 'recall', 'f1', 'support'} per label, in
    label order; support is the number of images of that class. F1 is
    2 TP / (2 TP + FP + FN), defined whenever the class occurs at all.
    macro_avg: the unweighted mean of each ratio over the classes where it is
    defined. accuracy is None for an empty set.
    """
    matrix = confusion_matrix(truth, predictions, len(labels))
    true_positives = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    classes = []
    for c, label in enumerate(labels):
        tp, fp, fn = true_positives[c], predicted[c] - true_positives[c], support[c] - true_positives[c]
        classes.append({
            "label": label,
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "support": int(support[c]),
        })
    macro = {}
    for name in ("precision", "recall", "f1"):
        defined = [c[name] for c in classes if c[name] is not None]
        macro[name] = float(np.mean(defined)) if defined else None
    count = int(matrix.sum())
    return {
        "count": count,
        "accuracy": _ratio(true_positives.sum(), count),
        "classes": classes,
        "macro_avg": macro,
        "confusion_matrix": matrix.tolist(),
    }


def write_report(path, report):
    """Write a report dict as UTF-8 JSON, atomically (whole or not at all)."""
    atomic_files.write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def _aligned(rows, left_columns=1):
    """Rows of cells -> lines, the first left_columns left-aligned, the rest right-aligned.

    A row None becomes a line of dashes under each column.
    """
    cells = [row for row in rows if row is not None]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(
            str(cell).ljust(w) if i < left_columns else str(cell).rjust(w)
            for i, (cell, w) in enumerate(zip(row or ["-" * w for w in widths], widths))
        ).rstrip()
        for row in rows
    ]


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def format_report(name, report, labels):
    """A set's report as text: accuracy line, per-class table, confusion matrix table."""
    header = ["class", "precision", "recall", "F1", "support"]
    rows = [header, None]
    for c in report["classes"]:
        rows.append([c["label"], _percent(c["precision"]), _percent(c["recall"]),
                     _percent(c["f1"]), c["support"]])
    macro = report["macro_avg"]
    rows.append(["(macro average)", _percent(macro["precision"]), _percent(macro["recall"]),
                 _percent(macro["f1"]), report["count"]])
    matrix_rows = [["true \\ predicted", *labels]]
    for label, counts in zip(labels, report["confusion_matrix"]):
        matrix_rows.append([label, *counts])
    return "\n".join([
        f"{name} accuracy {_percent(report['accuracy'])} (N={report['count']})",
        *_aligned(rows),
        "",
        f"{name} confusion matrix (rows: true class, columns: predicted class):",
        *_aligned(matrix_rows),
    ])


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow older than 10.1: one fixed-size bitmap font.
        return ImageFont.load_default()


def _text_size(draw, text, font):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def _shorten(draw, text, font, width):
    """text, cut with an ellipsis so that it fits in width pixels."""
    if _text_size(draw, text, font)[0] <= width:
        return text
    while text and _text_size(draw, text + "…", font)[0] > width:
        text = text[:-1]
    return text + "…"


def _heat_colour(fraction):
    """0 -> white, 1 -> dark blue, linearly: darker means more of the row's images."""
    white, blue = np.array([255, 255, 255]), np.array([8, 48, 107])
    return tuple(int(v) for v in np.round(white + (blue - white) * fraction))


def confusion_matrix_png(matrix, labels, title="Confusion matrix"):
    """A labelled heat map of the confusion matrix -> PNG bytes.

    Rows are true classes (names on the left), columns predicted classes
    (names on top, written vertically); each cell shows its count, and its
    colour is the count's share of its row (the true class's images), so a
    perfect classifier is a dark diagonal whatever the class sizes.
    """
    matrix = np.asarray(matrix)
    count = len(labels)
    cell = int(min(56, max(18, 1100 // max(count, 1))))
    font, small = _font(14), _font(max(9, min(14, cell // 3)))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    name_width = min(220, max(_text_size(scratch, str(label), font)[0] for label in labels) + 8)
    margin, title_height = 10, 24
    left = margin + 18 + name_width  # axis caption, then class names
    top = margin + title_height + 18 + name_width
    title_width = _text_size(scratch, title, font)[0]
    width = max(left + count * cell, margin + title_width) + margin
    height = top + count * cell + margin
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, margin), title, fill="black", font=font)
    caption_width = _text_size(draw, "predicted class", font)[0]
    draw.text((left + max(0, (count * cell - caption_width) // 2), margin + title_height),
              "predicted class", fill="black", font=font)
    caption = Image.new("RGB", (max(count * cell, caption_width), 18), "white")
    caption_draw = ImageDraw.Draw(caption)
    caption_draw.text(((caption.width - _text_size(caption_draw, "true class", font)[0]) // 2, 0),
                      "true class", fill="black", font=font)
    image.paste(caption.rotate(90, expand=True), (margin, top))
    row_totals = matrix.sum(axis=1)
    for i, label in enumerate(labels):
        name = _shorten(draw, str(label), font, name_width - 8)
        text_height = _text_size(draw, name, font)[1]
        draw.text((left - 6 - _text_size(draw, name, font)[0], top + i * cell + (cell - text_height) // 2),
                  name, fill="black", font=font)
        vertical = Image.new("RGB", (name_width, cell), "white")
        vertical_draw = ImageDraw.Draw(vertical)
        vertical_draw.text((4, (cell - text_height) // 2), name, fill="black", font=font)
        image.paste(vertical.rotate(90, expand=True), (left + i * cell, top - name_width))
    for i in range(count):
        for j in range(count):
            fraction = matrix[i, j] / row_totals[i] if row_totals[i] else 0.0
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            draw.rectangle(box, fill=_heat_colour(fraction), outline=(200, 200, 200))
            text = str(int(matrix[i, j]))
            text_width, text_height = _text_size(draw, text, small)
            if text_width <= cell - 2:
                draw.text(
                    (box[0] + (cell - text_width) // 2, box[1] + (cell - text_height) // 2 - 1),
                    text, fill="white" if fraction > 0.5 else "black", font=small,
                )
    return _png(image)


def _png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def load_display_images(images, indices, height, width,
                        max_pixels=input_pipeline.DEFAULT_MAX_IMAGE_PIXELS):
    """Images of a source -> {index: uint8 [height, width, 3]}, as the module saw them.

    images: an input_pipeline.ImageFiles or TFRecordImages; indices: which of
    them. Decoded and resized by
    input_pipeline.decode_and_resize, the function that prepared the
    bottlenecks. Images that cannot be decoded are missing from the result.
    """
    if not indices:
        return {}
    graph = tf.Graph()
    with graph.as_default():
        batches = images.batches(indices, height, width, len(indices), max_pixels)
        index, _, pixels = tf.compat.v1.data.make_one_shot_iterator(batches).get_next()
        pixels = tf.cast(tf.round(tf.clip_by_value(pixels, 0.0, 1.0) * 255.0), tf.uint8)
        results = {}
        with tf.compat.v1.Session(graph=graph) as sess:
            for batch_indices, values in input_pipeline.each_batch(sess, [index, pixels]):
                results.update(zip(batch_indices.tolist(), values))
    return results


def mistakes_to_show(misclassified, labels, count=MAX_MISCLASSIFIED_SHOWN):
    """The wrong images that teach most, at most `count`, in the order to show them.

    misclassified: [{"true": label, "confidence": probability of the predicted
    class, ...}]. The true classes take turns (round robin, so a class with
    many mistakes cannot fill the grid alone); each turn shows that class's
    most confident mistake not shown yet, and within a round the most
    confident come first. A confident mistake is a photo the classifier is
    sure about and wrong on: often a mislabelled or ambiguous photo.
    """
    by_class = {label: [] for label in labels}
    for mistake in misclassified:
        by_class[mistake["true"]].append(mistake)
    queues = [sorted(mistakes, key=lambda m: -m["confidence"]) for mistakes in by_class.values()]
    shown = []
    for turn in range(max(map(len, queues), default=0)):
        this_round = [queue[turn] for queue in queues if turn < len(queue)]
        shown += sorted(this_round, key=lambda m: -m["confidence"])
    return shown[:count]


def misclassified_grid_png(images, captions):
    """Tiles with captions burned in -> PNG bytes.

    images: [uint8 [H, W, 3]] (at most MAX_MISCLASSIFIED_SHOWN are used);
    captions: one (true label, predicted label) pair per image. Each image is
    scaled to TILE x TILE pixels above two lines, "true: ..." in green and
    "predicted: ..." in red, on a dark band; up to 4 tiles per row.
    """
    images = images[:MAX_MISCLASSIFIED_SHOWN]
    columns = min(4, len(images))
    rows = math.ceil(len(images) / columns)
    band, gap = CAPTION, GAP
    font = _font(13)
    grid = Image.new("RGB", (columns * (TILE + gap) + gap, rows * (TILE + band + gap) + gap), (30, 30, 30))
    draw = ImageDraw.Draw(grid)
    for n, (pixels, (true_label, predicted_label)) in enumerate(zip(images, captions)):
        x = gap + (n % columns) * (TILE + gap)
        y = gap + (n // columns) * (TILE + band + gap)
        tile = Image.fromarray(np.asarray(pixels, np.uint8))
        # Small module inputs (32x32) are enlarged with visible pixels, large ones smoothed.
        resample = Image.NEAREST if tile.width < TILE else Image.BILINEAR
        grid.paste(tile.resize((TILE, TILE), resample), (x, y))
        draw.text((x + 3, y + TILE + 2), _shorten(draw, f"true: {true_label}", font, TILE - 6),
                  fill=(120, 230, 120), font=font)
        draw.text((x + 3, y + TILE + 18), _shorten(draw, f"predicted: {predicted_label}", font, TILE - 6),
                  fill=(255, 120, 120), font=font)
    return _png(grid)


def _image_value(tag, png):
    width, height = Image.open(io.BytesIO(png)).size
    return tf.compat.v1.Summary.Value(
        tag=tag,
        image=tf.compat.v1.Summary.Image(
            height=height, width=width, colorspace=3, encoded_image_string=png
        ),
    )


def evaluation_summary(report, labels, misclassified_png=None, with_accuracy=True,
                       title="Confusion matrix"):
    """A tf.compat.v1.Summary for one evaluated set.

    Tags: 'accuracy' (scalar, 0-1; left out with with_accuracy=False, for a run
    that already has an accuracy curve), 'per_class_accuracy/<label>' (scalar,
    the class's recall: the share of its images classified right; classes
    without images are left out), 'confusion_matrix' (image) and, when given,
    'misclassified' (image). title heads the confusion matrix picture.
    """
    values = []
    if with_accuracy:
        values.append(tf.compat.v1.Summary.Value(tag="accuracy", simple_value=report["accuracy"]))
    for c in report["classes"]:
        if c["recall"] is not None:
            values.append(tf.compat.v1.Summary.Value(
                tag=f"per_class_accuracy/{c['label']}", simple_value=c["recall"]
            ))
    picture = confusion_matrix_png(report["confusion_matrix"], labels, title)
    values.append(_image_value("confusion_matrix", picture))
    if misclassified_png is not None:
        values.append(_image_value("misclassified", misclassified_png))
    return tf.compat.v1.Summary(value=values)
