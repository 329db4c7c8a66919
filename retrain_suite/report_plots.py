r"""The report page's pictures, drawn with matplotlib (Agg, no display): PNG bytes.

- `curves_png`: accuracy and cross entropy (or loss) against steps, one
  picture per phase (bottleneck training, fine-tuning), from the
  training.EvaluationPoint history;
- `confusion_png`: a confusion matrix as a heat map, of counts or
  row-normalised (each row's share of the true class's images), bounded at any
  number of classes: past MAX_MATRIX_CLASSES only the classes in the most
  mistakes (evaluation_pictures.most_confused_classes) are drawn.

Figures are made with matplotlib.figure.Figure, not pyplot: no global state,
no window, nothing kept between calls. Every text drawn comes from the user
(class names) or is ours; user text is drawn literally (no $...$ maths) and
shortened. Sizes stay bounded (about 1,000 x 900 pixels at most).
"""

import io
import math
import warnings

import numpy as np

from retrain_suite import evaluation, evaluation_pictures

_MATPLOTLIB = []  # [(matplotlib, Figure)] once imported


def _matplotlib():
    """matplotlib (with its headless Agg backend, chosen once) and its Figure, imported
    when a picture is first drawn, not with this module: matplotlib.figure is 0.17 s of
    every command's start-up, and a rerun whose pictures are all kept draws none."""
    if not _MATPLOTLIB:
        import matplotlib

        matplotlib.use("Agg")  # before anything else of matplotlib: a headless backend
        from matplotlib.figure import Figure

        _MATPLOTLIB.append((matplotlib, Figure))
    return _MATPLOTLIB[0]


MAX_MATRIX_CLASSES = 30  # rows and columns of a heat map: past it the most confused
MAX_ANNOTATED_CLASSES = 15  # up to this many classes each cell shows its number
MAX_LABEL_CHARACTERS = 24  # class names on the axes are shortened past this
DPI = 100

# What matplotlib is told for every picture: no maths in text ("$x$" in a class
# name stays "$x$"), a font every install has.
_STYLE = {"text.parse_math": False, "font.family": "DejaVu Sans", "font.size": 9,
          "axes.titlesize": 10}


def plain_text(text, limit=MAX_LABEL_CHARACTERS):
    """User text for a picture: control characters and lone surrogates (a file name
    that is not UTF-8) as escapes, cut with an ellipsis past `limit` characters."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _png(figure):
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # A class name in a script the font lacks draws boxes; that is not worth a warning.
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _finite(values):
    """float64 [n]: None and non-finite values as NaN (a gap in a line)."""
    return np.array([math.nan if v is None or not math.isfinite(v) else v for v in values],
                    np.float64)


def _line(axes, steps, values, label, style):
    values = _finite(values)
    if np.isnan(values).all():
        return False
    marker = "o" if len(steps) <= 40 else None  # a run of one evaluation is still a dot
    axes.plot(steps, values, style, label=label, marker=marker, markersize=3, linewidth=1.5)
    return True


def curves_png(points, title, fine_tuning=False, multi_label=False):
    """Accuracy (left) and cross entropy (right) against step -> PNG bytes (about 900 x 340).

    multi_label: the points' validation "accuracy" is the whole validation set's mean
    average precision (multi_label.training), drawn as such.

    points: [training.EvaluationPoint] of one phase, in step order. Bottleneck
    training draws the training batch's accuracy and cross entropy and the
    validation sample's; fine-tuning (fine_tuning=True) draws the whole
    validation set's and, on the right, the training loss.
    """
    steps = np.array([p.step for p in points], np.int64)
    matplotlib, Figure = _matplotlib()
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(9, 3.4), dpi=DPI, layout="constrained")
        accuracy, entropy = figure.subplots(1, 2)
        validation_images = max((p.validation_images for p in points), default=0)
        validation = (f"validation (all {validation_images})" if fine_tuning or multi_label
                      else f"validation (sample of {validation_images})")
        drawn = []
        if not fine_tuning:
            drawn.append(_line(accuracy, steps, [_percent(p.train_accuracy) for p in points],
                               "training batch", "-"))
            drawn.append(_line(entropy, steps, [p.train_cross_entropy for p in points],
                               "training batch", "-"))
        else:
            drawn.append(_line(entropy, steps, [p.train_loss for p in points],
                               "training loss (batch)", "-"))
        drawn.append(_line(accuracy, steps, [_percent(p.validation_accuracy) for p in points],
                           validation, "--"))
        drawn.append(_line(entropy, steps, [p.validation_cross_entropy for p in points],
                           validation, "--"))
        accuracy.set_ylim(-2, 102)
        accuracy.set_ylabel("mean average precision (%)" if multi_label else "accuracy (%)")
        entropy.set_ylabel("cross entropy" + (" / loss" if fine_tuning else ""))
        for axes in (accuracy, entropy):
            axes.set_xlabel("fine-tuning step" if fine_tuning else "training step")
            axes.grid(True, alpha=0.3)
            if axes.get_legend_handles_labels()[0]:
                axes.legend(loc="best", fontsize=8)
        figure.suptitle(title)
        return _png(figure)


def _percent(fraction):
    return None if fraction is None else 100 * fraction


def matrix_of(counts, labels, limit=MAX_MATRIX_CLASSES):
    """The part of a confusion matrix to draw. -> (shown class indices int [k],
    counts int64 [k, k] (rows true, columns predicted), row totals int64 [k]: every
    image of each shown true class, those taken for classes not shown included).

    counts: evaluation.confusion_counts' cells. Past `limit` classes, the
    `limit` classes in the most mistakes.
    """
    counts = np.asarray(counts, np.int64).reshape(-1, 3)
    shown = np.arange(len(labels))
    if len(labels) > limit:
        shown = evaluation_pictures.most_confused_classes(counts, len(labels), limit)
    position = np.full(len(labels), -1, np.int64)
    position[shown] = np.arange(len(shown))
    totals = np.bincount(counts[:, 0], counts[:, 2], len(labels)).astype(np.int64)[shown]
    inside = counts[(position[counts[:, 0]] >= 0) & (position[counts[:, 1]] >= 0)]
    dense = evaluation.dense_matrix(
        np.stack([position[inside[:, 0]], position[inside[:, 1]], inside[:, 2]], axis=1),
        len(shown))
    return shown, dense, totals


def confusion_png(counts, labels, title, normalized=False):
    """A confusion matrix heat map -> PNG bytes (at most about 1,000 x 900 pixels).

    counts: evaluation.confusion_counts' cells; labels: [C] class names. Rows
    are true classes, columns predicted ones. normalized: each cell is its
    share of the true class's images (a row of a shown class sums to 1 less
    what went to classes not shown), else the count. Up to
    MAX_ANNOTATED_CLASSES classes every cell shows its value.
    """
    shown, matrix, totals = matrix_of(counts, labels)
    values = matrix / np.maximum(totals, 1)[:, None] if normalized else matrix
    names = [plain_text(labels[c]) for c in shown]
    side = len(shown)
    matplotlib, Figure = _matplotlib()
    with matplotlib.rc_context(_STYLE):
        inches = min(9.0, 4.2 + 0.16 * side)
        figure = Figure(figsize=(inches + 1.4, inches), dpi=DPI, layout="constrained")
        axes = figure.subplots()
        image = axes.imshow(values, cmap="Blues", vmin=0,
                            vmax=1 if normalized else max(1, int(values.max(initial=0))),
                            interpolation="nearest", aspect="equal")
        figure.colorbar(image, ax=axes, shrink=0.8,
                        label="share of the true class's images" if normalized else "images")
        tick_size = 8 if side <= 20 else 6
        axes.set_xticks(range(side), names, rotation=90, fontsize=tick_size)
        axes.set_yticks(range(side), names, fontsize=tick_size)
        axes.set_xlabel("predicted class")
        axes.set_ylabel("true class")
        if side <= MAX_ANNOTATED_CLASSES:
            top = values.max(initial=0)
            for i in range(side):
                for j in range(side):
                    if matrix[i, j] == 0 and i != j:
                        continue  # empty cells stay blank: the mistakes stand out
                    text = f"{values[i, j]:.2f}" if normalized else str(int(values[i, j]))
                    dark = top and values[i, j] > 0.55 * top
                    axes.text(j, i, text, ha="center", va="center", fontsize=9 if side <= 8 else 7,
                              color="white" if dark else "black")
        if side < len(labels):
            title += f"\n(the {side} classes with the most mistakes, of {len(labels)})"
        axes.set_title(plain_text(title, 120))
        return _png(figure)
