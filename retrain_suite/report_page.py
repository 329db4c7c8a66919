r"""The report folder of a run: report.html, results.csv and the pictures as PNG.

`write_report(path, content)` turns a report_content.ReportContent into

    <report_dir>/report.html                      one page, every picture inside it
    <report_dir>/results.csv                      one row per evaluation
    <report_dir>/training_curves.png              accuracy, cross entropy by step
    <report_dir>/fine_tuning_curves.png           the same for fine-tuning, if it ran
    <report_dir>/confusion_matrix.png             counts, of the evaluated set
    <report_dir>/confusion_matrix_normalized.png  each row's shares

written whole: the files go into a temporary sibling folder which then
replaces the folder (atomic_files.replace_dir), and a folder holding anything
but these names is refused, never emptied.

The page opens from disk with no server and no network, and can be mailed:
no script, no link to load, each picture a data: URI. Every text that comes
from the user's data or flags (class names, file names, paths) goes through
`text` (html.escape, and control characters or lone surrogates shown as
escapes), and a Content-Security-Policy lets the page load nothing and run
nothing even if something slipped through.
"""

import base64
import csv
import datetime
import html
import io
import math

import tensorflow as tf

from retrain_suite import atomic_files, evaluation, output_paths, picture_memo, report_plots
from retrain_suite.artifact_check import format_size

PAGE = "report.html"
CSV = "results.csv"
TRAINING_CURVES = "training_curves.png"
FINE_TUNING_CURVES = "fine_tuning_curves.png"
MATRIX = "confusion_matrix.png"
MATRIX_NORMALIZED = "confusion_matrix_normalized.png"

MAX_PAGE_CLASSES = 100  # rows of a per-class table; past it the worst classes, and a note

CSV_COLUMNS = ("phase", "step", "train_accuracy", "train_cross_entropy", "train_loss",
               "validation_accuracy", "validation_cross_entropy", "validation_images")

# Nothing may load or run: pictures are data: URIs, style is the page's own.
CONTENT_SECURITY_POLICY = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                           "base-uri 'none'; form-action 'none'")

SET_TITLES = {"testing": "Test set", "validation": "Validation set"}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; word-break: break-all; }
img.picture { max-width: 100%; height: auto; border: 1px solid #eee; }
.pair { display: flex; flex-wrap: wrap; gap: 1em; } .pair p { flex: 1 1 420px; margin: 0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; white-space: pre-wrap; }
.note { color: #666; font-size: 0.9em; }
.thumbs { display: flex; flex-wrap: wrap; gap: 8px; }
figure.thumb { margin: 0; width: 128px; font-size: 0.75em; }
figure.thumb .file { word-break: break-all; color: #555; }
figure.thumb img { width: 128px; height: 128px; object-fit: contain; background: #222;
                   image-rendering: pixelated; }
"""


def text(value):
    """Any value as HTML text: escaped (& < > " '), with control characters, invisible
    format characters and lone surrogates (names that are not UTF-8) as visible escapes."""
    return html.escape(report_plots.plain_text(value, limit=math.inf), quote=True)


def data_uri(data, mime):
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _percent(value):
    return "-" if value is None else f"{100 * value:.1f}%"


def _number(value):
    return "-" if value is None else f"{value:.4f}"


def _table(header, rows, names=1):
    """An HTML table; the first `names` columns are left-aligned text. Cells are escaped."""
    head = "".join(f'<th{" class=name" if i < names else ""}>{text(h)}</th>'
                   for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td{" class=name" if i < names else ""}>{text(c)}</td>'
                         for i, c in enumerate(row)) + "</tr>\n"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>"


def _picture(pictures, name, alt):
    if name not in pictures:
        return ""
    return (f'<p><img class="picture" src="{data_uri(pictures[name], "image/png")}" '
            f'alt="{text(alt)}"></p>')


def _summary(content):
    rows = [("module", content.module), ("module shape", content.module_shape),
            ("labels (multi-label)" if content.multi_label else "classes", len(content.labels)),
            ("images", sum(sum(c.values()) for c in content.counts.values())),
            *content.outcome]
    return "<h2>Summary</h2>" + _table(("", "value"), rows, names=2)


def _data(content):
    splits = ("training", "validation", "testing")
    labels = list(content.labels)
    note = ""
    if len(labels) > MAX_PAGE_CLASSES:
        labels = sorted(labels, key=lambda label: sum(content.counts[label].values()))
        labels = labels[:MAX_PAGE_CLASSES]
        note = (f'<p class="note">The {MAX_PAGE_CLASSES} classes with the fewest images, of '
                f"{len(content.labels)} (every class is in the --eval_report JSON).</p>")
    rows = [(label, *(content.counts[label][s] for s in splits),
             sum(content.counts[label].values())) for label in labels]
    totals = [sum(content.counts[label][s] for label in content.labels) for s in splits]
    rows.append(("TOTAL", *totals, sum(totals)))
    return (f"<h2>Data</h2><p>{len(content.labels)} classes.</p>{note}"
            + _table(("class", *splits, "total"), rows)
            + f"<pre>{text(content.copies)}</pre>")


def _curves(content, pictures):
    parts = ["<h2>Training curves</h2>"]
    for phase, name in (("training", TRAINING_CURVES), ("fine-tuning", FINE_TUNING_CURVES)):
        points = content.history.get(phase, [])
        if points:
            parts.append(_picture(pictures, name, f"{phase}: accuracy and cross entropy by step"))
    if len(parts) == 1:
        parts.append("<p>No evaluation was made.</p>")
    parts.append(f'<p class="note">Every value is in {CSV}, beside this page.</p>')
    return "".join(parts)


def _class_rows(report):
    """The per-class table's rows: every class, or past MAX_PAGE_CLASSES the lowest F1. ->
    (rows, note)."""
    classes = report["classes"]
    shown = range(len(classes))
    note = ""
    if len(classes) > MAX_PAGE_CLASSES:
        shown = evaluation.worst_first([c["f1"] for c in classes])[:MAX_PAGE_CLASSES]
        note = (f'<p class="note">The {MAX_PAGE_CLASSES} classes with the lowest F1, of '
                f"{len(classes)} (every class is in the --eval_report JSON).</p>")
    rows = [(classes[i]["label"], _percent(classes[i]["precision"]),
             _percent(classes[i]["recall"]), _percent(classes[i]["f1"]), classes[i]["support"])
            for i in shown]
    macro = report["macro_avg"]
    rows.append(("(macro average)", _percent(macro["precision"]), _percent(macro["recall"]),
                 _percent(macro["f1"]), report["count"]))
    return rows, note


def _multi_label_rows(report):
    """A multi-label report's per-class rows (multi_label.metrics), lowest F1 first past
    MAX_PAGE_CLASSES. -> (rows, note)."""
    classes = report["classes"]
    shown = evaluation.worst_first([c["f1"] for c in classes])[:MAX_PAGE_CLASSES]
    if len(classes) <= MAX_PAGE_CLASSES:
        shown = range(len(classes))
    note = "" if len(classes) <= MAX_PAGE_CLASSES else (
        f'<p class="note">The {MAX_PAGE_CLASSES} classes with the lowest F1, of '
        f"{len(classes)} (every class is in the --eval_report JSON).</p>")
    rows = [(c["label"], f"{c['threshold']:.3f}", _percent(c["precision"]),
             _percent(c["recall"]), _percent(c["f1"]), _percent(c["average_precision"]),
             c["support"], c["predicted"]) for c in (classes[i] for i in shown)]
    macro = report["macro_avg"]
    rows.append(("(macro average)", "", _percent(macro["precision"]), _percent(macro["recall"]),
                 _percent(macro["f1"]), _percent(report["mean_average_precision"]), "", ""))
    return rows, note


def _evaluations(content):
    parts = ["<h2>Per-class results</h2>"]
    for split in ("validation", "testing"):
        report = content.evaluations.get(split)
        if report is None:
            parts.append(f"<p>{SET_TITLES[split]}: no images.</p>")
            continue
        if content.multi_label:
            rows, note = _multi_label_rows(report)
            parts.append(f"<h3>{SET_TITLES[split]}: mean average precision "
                         f"{_percent(report['mean_average_precision'])}, exact match "
                         f"{_percent(report['exact_match'])} (N={report['count']})</h3>{note}")
            parts.append(_table(("class", "threshold", "precision", "recall", "F1", "AP",
                                 "support", "predicted"), rows))
            continue
        rows, note = _class_rows(report)
        parts.append(f"<h3>{SET_TITLES[split]}: accuracy {_percent(report['accuracy'])} "
                     f"(N={report['count']})</h3>{note}")
        parts.append(_table(("class", "precision", "recall", "F1", "support"), rows))
    return "".join(parts)


def _matrices(content, pictures):
    split = content.evaluated_set
    if split is None or content.multi_label:  # several labels an image: no confusion matrix
        return ""
    return (f"<h2>Confusion matrices ({SET_TITLES[split].lower()})</h2>"
            '<p class="note">Rows: true class; columns: predicted class.</p><div class="pair">'
            + _picture(pictures, MATRIX, "confusion matrix, counts")
            + _picture(pictures, MATRIX_NORMALIZED, "confusion matrix, shares of each row")
            + "</div>")


def _thumbnails(content):
    split = content.evaluated_set
    if split is None or content.multi_label:
        return ""
    report = content.evaluations[split]
    wrong = len(report["misclassified"])
    title = f"<h2>Misclassified images ({SET_TITLES[split].lower()})</h2>"
    if not wrong:
        return title + f"<p>None of the {report['count']} images was misclassified.</p>"
    parts = [title, f'<p class="note">{len(content.thumbnails)} of the {wrong} misclassified '
             "images, as the module saw them, grouped by true class, the most confident "
             "mistakes first.</p>"]
    label = None
    for t in content.thumbnails:
        if t.true_label != label:
            if label is not None:
                parts.append("</div>")
            label = t.true_label
            parts.append(f'<h3>true class: {text(label)}</h3><div class="thumbs">')
        parts.append(
            f'<figure class="thumb"><img src="{data_uri(t.jpeg, "image/jpeg")}" '
            f'alt="{text(t.path)}" title="{text(t.path)}"><figcaption>predicted '
            f"<b>{text(t.predicted_label)}</b> ({100 * t.confidence:.0f}%)<br>"
            f'<span class="file">{text(t.path)}</span></figcaption></figure>')
    if label is not None:
        parts.append("</div>")
    return "".join(parts)


def _artifacts(content):
    if content.artifacts is None:
        return ""
    set_name, results = content.artifacts
    if content.multi_label:
        rows = [(r.format, r.path, format_size(r.size_bytes),
                 f"{_percent(r.mean_average_precision)} (N={r.count})", _percent(r.exact_match),
                 _percent(r.agreement), f"{r.latency_ms:.2f}", r.images_per_call) for r in results]
        return ("<h2>Exported files</h2>"
                + _table(("format", "path", "size", f"{set_name} mAP", "exact match",
                          "agrees with training", "ms/image", "images/call"), rows, names=2))
    rows = [(r.format, r.path, format_size(r.size_bytes), f"{_percent(r.accuracy)} (N={r.count})",
             _percent(r.agreement), f"{r.latency_ms:.2f}", r.images_per_call) for r in results]
    return ("<h2>Exported files</h2>"
            + _table(("format", "path", "size", f"{set_name} accuracy", "agrees with training",
                      "ms/image", "images/call"), rows, names=2))


def _tuning(content):
    if not content.tuning_table:
        return ""
    header, *rows = content.tuning_table
    return ("<h2>Tuning</h2>"
            '<p class="note">Each trial scored by cross-validation over the training and '
            "validation images (test images take no part); * marks the chosen trial, then "
            "trained as a normal run. The rule and every number are in the --eval_report "
            "JSON and in TensorBoard's HParams dashboard.</p>"
            + _table(header, rows, names=0) + f"<p>{text(content.tuning_choice)}</p>")


def _phases(content):
    if not content.phases:
        return ""
    rows = [(name, f"{seconds:.1f}") for name, seconds in content.phases]
    if content.total_seconds is not None:
        rows.append(("total so far (with what no phase covers)", f"{content.total_seconds:.1f}"))
    return ("<h2>Time by phase</h2>" + _table(("phase", "seconds"), rows)
            + '<p class="note">Writing this report is not counted here (it is in the log).</p>')


def render_page(content, pictures):
    """The report page, a str of HTML. pictures: {file name: PNG bytes}, embedded."""
    written = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    settings = _table(("flag", "value"), content.settings, names=2)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Retraining report: {text(content.module)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f'<h1>Retraining report</h1><p class="note">Written by retrain.py, {written}.</p>',
        _summary(content),
        f"<h2>Run configuration</h2>{settings}",
        _data(content),
        _tuning(content),
        _curves(content, pictures),
        _evaluations(content),
        _matrices(content, pictures),
        _thumbnails(content),
        _artifacts(content),
        _phases(content),
        "</body></html>",
        "",
    ])


def _cell(value):
    return "" if value is None else value


def results_csv(history, multi_label=False):
    """history ({phase: [training.EvaluationPoint]}) as CSV text: a header of
    CSV_COLUMNS, then one row per evaluation, training's first. An empty cell is a
    value the phase does not measure; a diverged value is written nan or inf. A
    multi-label run's validation_accuracy column is its validation mAP, and is named so."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([("validation_mean_average_precision" if multi_label and c ==
                      "validation_accuracy" else c) for c in CSV_COLUMNS])
    for phase in ("training", "fine-tuning"):
        for p in history.get(phase, []):
            writer.writerow([phase, p.step, *(_cell(v) for v in (
                p.train_accuracy, p.train_cross_entropy, p.train_loss, p.validation_accuracy,
                p.validation_cross_entropy)), p.validation_images])
    return buffer.getvalue()


def draw_pictures(content, memo=None):
    """{file name: PNG bytes}: the curves of each phase that ran, and the evaluated
    set's confusion matrices. memo: a picture_memo.PictureMemo (a picture a rerun
    already drew is not drawn again), or None."""
    pictures = {}
    phases = (("training", TRAINING_CURVES, "Training the final layer on bottlenecks"),
              ("fine-tuning", FINE_TUNING_CURVES, "Fine-tuning the module with the layer"))
    for phase, name, title in phases:
        points = content.history.get(phase)
        if points:
            options = {"fine_tuning": phase == "fine-tuning",
                       "multi_label": content.multi_label and phase == "training"}
            inputs = [points, title, options]
            pictures[name] = picture_memo.drawn(
                memo, name, inputs,
                lambda inputs=inputs: report_plots.curves_png(*inputs[:2], **inputs[2]))
    split = content.evaluated_set
    if split is not None and not content.multi_label:
        report = content.evaluations[split]
        title = f"{SET_TITLES[split]} (N={report['count']})"
        for name, words, normalized in ((MATRIX, "images", False),
                                        (MATRIX_NORMALIZED, "shares of each true class", True)):
            inputs = [report["confusion_counts"], content.labels, f"{title}: {words}", normalized]
            pictures[name] = picture_memo.drawn(
                memo, name, inputs, lambda inputs=inputs: report_plots.confusion_png(*inputs))
    return pictures


def report_files(content, memo=None):
    """{file name: bytes} of the report folder (memo: as draw_pictures')."""
    pictures = draw_pictures(content, memo)
    files = {PAGE: render_page(content, pictures).encode("utf-8"),
             CSV: results_csv(content.history, content.multi_label).encode("utf-8"), **pictures}
    unknown = set(files) - output_paths.REPORT_ENTRIES
    if unknown:  # output_paths' list decides which folders may be replaced
        raise ValueError(f"report files {sorted(unknown)} missing from REPORT_ENTRIES")
    return files


def write_report(path, content, memo=None):
    """Write the report folder at path, whole (see the module docstring). Raises
    FileExistsError, leaving it as it was, when path holds anything but report files.
    memo: a picture_memo.PictureMemo over the folder at path, or None."""
    files = report_files(content, memo)

    def write_into(folder):
        tf.io.gfile.makedirs(folder)
        for name, data in files.items():
            with tf.io.gfile.GFile(f"{folder}/{name}", "wb") as f:
                f.write(data)

    atomic_files.replace_dir(path, write_into, output_paths.REPORT_ENTRIES)
