r"""The pictures of an evaluation report, for TensorBoard.

- `confusion_matrix_png`: the confusion matrix as a labelled heat map, bounded
  at any number of classes (`most_confused_classes`);
- `misclassified_grid_png`: wrong images as the module saw them
  (`load_display_images`), chosen by `mistakes_to_show` (every true class in
  turn, the most confident mistakes first);
- `evaluation_summary`: a TensorBoard Summary proto with those pictures and the
  per-class accuracy scalars, written by a tf.compat.v1 FileWriter.

Conventions are evaluation's: rows the true class, columns the predicted one.
"""

import io
import math

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from retrain_suite.dataset import MAX_CLASSES_LISTED
from retrain_suite.evaluation import worst_first
from retrain_suite.images import pipelines as image_pipelines

MAX_MISCLASSIFIED_SHOWN = 16

MAX_PICTURE_CLASSES = 40  # classes drawn in the confusion matrix picture: its side
# stays under about 1,400 pixels (PIL refuses to open pictures of over 179M pixels)

TILE = 160  # pixels, side of one image in the misclassified grid

CAPTION = 36  # pixels, height of the caption band under each tile

GAP = 4  # pixels between tiles


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


def most_confused_classes(counts, class_count, limit=MAX_PICTURE_CLASSES):
    """The classes in the most mistakes, at most limit. -> sorted int indices.

    counts: confusion_counts' cells. A class's mistakes are its images taken
    for another class plus other classes' images taken for it; ties (classes
    without mistakes among them) go to the earlier label.
    """
    counts = np.asarray(counts, np.int64).reshape(-1, 3)
    wrong = counts[counts[:, 0] != counts[:, 1]]
    mistakes = (np.bincount(wrong[:, 0], wrong[:, 2], class_count)
                + np.bincount(wrong[:, 1], wrong[:, 2], class_count))
    # A stable sort on the negated counts keeps label order among equals.
    return np.sort(np.argsort(-mistakes, kind="stable")[:limit])


OTHER_CLASSES = "(other classes)"


def confusion_matrix_png(counts, labels, title="Confusion matrix"):
    """A labelled heat map of the confusion matrix -> PNG bytes.

    counts: confusion_counts' cells. Rows are true classes (names on the left),
    columns predicted classes (names on top, written vertically); each cell
    shows its count, and its colour is the count's share of its row (all the
    true class's images), so a perfect classifier is a dark diagonal whatever
    the class sizes. Past MAX_PICTURE_CLASSES classes, only the
    most_confused_classes are drawn, a last column counts each row's images
    taken for a class not drawn, and a line under the title says so: the
    picture's side stays bounded (about 1,400 pixels) at any number of classes.
    """
    counts = np.asarray(counts, np.int64).reshape(-1, 3)
    row_totals = np.bincount(counts[:, 0], counts[:, 2], len(labels))
    shown = np.arange(len(labels))
    legend = None
    if len(labels) > MAX_PICTURE_CLASSES:
        shown = most_confused_classes(counts, len(labels))
        legend = (f"Only the {len(shown)} classes with the most mistakes, of {len(labels)}, "
                  f"are drawn; {OTHER_CLASSES}: images taken for a class not drawn.")
    position = np.full(len(labels), -1, np.int64)
    position[shown] = np.arange(len(shown))
    cells = counts[position[counts[:, 0]] >= 0]
    rows = len(shown)
    columns = rows + (legend is not None)
    matrix = np.zeros([rows, columns], np.int64)
    column_of = np.where(position[cells[:, 1]] >= 0, position[cells[:, 1]], columns - 1)
    np.add.at(matrix, (position[cells[:, 0]], column_of), cells[:, 2])
    names = [str(labels[c]) for c in shown] + ([OTHER_CLASSES] if legend else [])
    cell = int(min(56, max(18, 1100 // max(columns, 1))))
    font, small = _font(14), _font(max(9, min(14, cell // 3)))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    name_width = min(220, max(_text_size(scratch, name, font)[0] for name in names) + 8)
    margin, title_height = 10, 24
    headings = [title] + ([legend] if legend else [])
    left = margin + 18 + name_width  # axis caption, then class names
    top = margin + title_height * len(headings) + 18 + name_width
    # Neither a long title nor the legend may widen the picture past the grid's width or 900.
    text_room = max(left + columns * cell, 900) - 2 * margin
    headings = [_shorten(scratch, text, font, text_room) for text in headings]
    text_width = max(_text_size(scratch, text, font)[0] for text in headings)
    width = max(left + columns * cell, margin + text_width) + margin
    height = top + rows * cell + margin
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for n, text in enumerate(headings):
        draw.text((margin, margin + n * title_height), text, fill="black", font=font)
    caption_width = _text_size(draw, "predicted class", font)[0]
    draw.text((left + max(0, (columns * cell - caption_width) // 2),
               margin + title_height * len(headings)),
              "predicted class", fill="black", font=font)
    caption = Image.new("RGB", (max(rows * cell, caption_width), 18), "white")
    caption_draw = ImageDraw.Draw(caption)
    caption_draw.text(((caption.width - _text_size(caption_draw, "true class", font)[0]) // 2, 0),
                      "true class", fill="black", font=font)
    image.paste(caption.rotate(90, expand=True), (margin, top))
    for i, full_name in enumerate(names):
        name = _shorten(draw, full_name, font, name_width - 8)
        text_height = _text_size(draw, name, font)[1]
        if i < rows:
            draw.text((left - 6 - _text_size(draw, name, font)[0],
                       top + i * cell + (cell - text_height) // 2), name, fill="black", font=font)
        vertical = Image.new("RGB", (name_width, cell), "white")
        vertical_draw = ImageDraw.Draw(vertical)
        vertical_draw.text((4, (cell - text_height) // 2), name, fill="black", font=font)
        image.paste(vertical.rotate(90, expand=True), (left + i * cell, top - name_width))
    for i, c in enumerate(shown):
        for j in range(columns):
            fraction = matrix[i, j] / row_totals[c] if row_totals[c] else 0.0
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


def load_display_images(run, rows):
    """Images of a run -> {row: uint8 [height, width, 3]}, as the module saw them.

    run: a run_data.PreparedRun; rows: which images of its source. Decoded and
    resized by images.preprocess.decode_and_resize, the function that prepared
    the bottlenecks, once per run: those decoded before come from run.displayed.
    Images that cannot be decoded are missing from the result.
    """
    wanted = list(dict.fromkeys(rows))
    missing = [row for row in wanted if row not in run.displayed]
    if missing:
        graph = tf.Graph()
        with graph.as_default():
            batches = run.image_batches(missing, len(missing))
            index, _, pixels = tf.compat.v1.data.make_one_shot_iterator(batches).get_next()
            with tf.compat.v1.Session(graph=graph) as sess:
                for batch_indices, values in image_pipelines.each_batch(sess, [index, pixels]):
                    keep_displayed(run, batch_indices, values, set(missing))
    return {row: run.displayed[row] for row in wanted if row in run.displayed}


def display_pixels(pixels):
    """float32 [..., 3] in [0, 1], as decoded for the module -> uint8, as displayed."""
    return np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8)


def keep_displayed(run, indices, pixels, rows):
    """Keep in run.displayed the images of a decoded batch (indices int [B] into run's
    source, pixels float32 [B, H, W, 3]) that are among `rows` (a set): those shown
    later are then not decoded again. -> pixels, unchanged."""
    for index, image in zip(indices.tolist(), pixels):
        if index in rows and index not in run.displayed:
            run.displayed[index] = display_pixels(image)
    return pixels


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
    queues = [sorted(mistakes, key=lambda m: -m["confidence"])
              for mistakes in by_class.values() if mistakes]
    shown = []
    # Every round shows one mistake or more: `count` rounds are enough, whatever the
    # number of classes and of mistakes in the largest.
    for turn in range(min(count, max(map(len, queues), default=0))):
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
    width, height = Image.open(io.BytesIO(png)).size  # reads the header only
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
    without images are left out, and past MAX_CLASSES_LISTED classes only the
    MAX_CLASSES_LISTED with the lowest are written), 'confusion_matrix' (image)
    and, when given, 'misclassified' (image). title heads the confusion matrix picture.
    """
    values = []
    if with_accuracy:
        values.append(tf.compat.v1.Summary.Value(tag="accuracy", simple_value=report["accuracy"]))
    classes = [c for c in report["classes"] if c["recall"] is not None]
    if len(report["classes"]) > MAX_CLASSES_LISTED:
        classes = [classes[i] for i in worst_first([c["recall"] for c in classes])]
        classes = classes[:MAX_CLASSES_LISTED]
    for c in classes:
        values.append(tf.compat.v1.Summary.Value(
            tag=f"per_class_accuracy/{c['label']}", simple_value=c["recall"]
        ))
    picture = confusion_matrix_png(report["confusion_counts"], labels, title)
    values.append(_image_value("confusion_matrix", picture))
    if misclassified_png is not None:
        values.append(_image_value("misclassified", misclassified_png))
    return tf.compat.v1.Summary(value=values)
