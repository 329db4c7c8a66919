"""The report folder (report_content, report_page, report_plots): a page that shows hostile
names as text and embeds every picture, a CSV of the history, a folder written whole
that never replaces a user's, and a real command-line run's report."""

import base64
import csv
import html.parser
import io
import math
import os
import re
import time

import helpers
import numpy as np
import pytest
from PIL import Image

from retrain_suite import (
    artifact_check,
    evaluation,
    output_paths,
    picture_memo,
    report_content,
    report_page,
    report_plots,
    training,
)
from retrain_suite import config as config_lib
from retrain_suite import dataset as dataset_lib
from retrain_suite.images import pipelines as image_pipelines

SCRIPT_LABEL = "<script>alert(1)</script>"
AMPERSAND_LABEL = "a&b \"quoted\" 'x'"
MATHS_LABEL = r"$\nosuch{x}$"  # maths that matplotlib cannot parse, unless told not to try
NOT_UTF8_LABEL = "caf\udce9"  # a folder name in Latin-1, as os.listdir gives it
HOSTILE_FILE = "<img src=x onerror=alert(2)>.jpg"
LABELS = ("plain", SCRIPT_LABEL, AMPERSAND_LABEL, MATHS_LABEL, NOT_UTF8_LABEL)
SECRET_PATH = "/models/<b>bold</b>"


def point(step, **values):
    fields = dict(train_accuracy=None, train_cross_entropy=None, train_loss=None,
                  validation_accuracy=None, validation_cross_entropy=None, validation_images=0)
    return training.EvaluationPoint(step=step, **{**fields, **values})


TRAINING_HISTORY = [point(s, train_accuracy=0.5 + s / 100, train_cross_entropy=1.5 - s / 50,
                          validation_accuracy=0.4 + s / 100, validation_cross_entropy=1.6 - s / 50,
                          validation_images=7) for s in (10, 20, 30)]
FINE_TUNING_HISTORY = [
    point(0, validation_accuracy=0.7, validation_cross_entropy=0.9, validation_images=9),
    point(5, train_loss=0.8, validation_accuracy=0.8, validation_cross_entropy=0.7,
          validation_images=9),
    point(10, train_loss=math.inf, validation_accuracy=0.1, validation_cross_entropy=math.nan,
          validation_images=9),  # diverged
]


def colour_jpeg(colour, size=32):
    return report_content.thumbnail_jpeg(np.full((size, size, 3), colour, np.uint8))


def evaluated(truth, predicted, files, labels=LABELS):
    """An evaluation report with its misclassified list, as reporting makes it."""
    report = evaluation.evaluate(truth, predicted, list(labels))
    report["misclassified"] = [
        {"image": f, "true": labels[t], "predicted": labels[p], "confidence": 0.9 - n / 20}
        for n, (f, t, p) in enumerate(zip(files, truth, predicted)) if t != p]
    return report


def hostile_content(**changes):
    """A ReportContent whose every text a user controls is hostile."""
    truth, predicted = [0, 1, 1, 2, 3, 4, 4, 0], [0, 1, 0, 2, 1, 4, 3, 0]
    files = [f"{LABELS[t]}/img{n}.jpg" for n, t in enumerate(truth)]
    files[2] = f"{SCRIPT_LABEL}/{HOSTILE_FILE}"
    testing = evaluated(truth, predicted, files)
    thumbnails = report_content.grouped_worst_first(
        report_content.Thumbnail(m["image"], m["true"], m["predicted"], m["confidence"],
                                 colour_jpeg(40 * n))
        for n, m in enumerate(testing["misclassified"]))
    content = report_content.ReportContent(
        settings=(("image_dir", f"/photos/{SCRIPT_LABEL}"), ("tfhub_module", SECRET_PATH),
                  ("random_seed", "1")),
        module=SECRET_PATH, module_shape="input 32 x 32 pixels, 64 features per image",
        labels=LABELS,
        counts={label: {"training": 5, "validation": 1, "testing": 2} for label in LABELS},
        copies=f"Copies: {HOSTILE_FILE} = {SCRIPT_LABEL}/a.jpg",
        history={"training": TRAINING_HISTORY, "fine-tuning": FINE_TUNING_HISTORY},
        outcome=(("test accuracy", "62.5% (N=8)"),),
        evaluations={"validation": evaluated([0, 1, 2], [0, 1, 1], ["a", "b", "c"]),
                     "testing": testing},
        thumbnails=thumbnails,
        artifacts=("test", [artifact_check.ArtifactResult(
            "frozen graph", f"/out/{HOSTILE_FILE}.pb", 26_100, 32, 8, 0.625, 1.0, 0.61)]),
        phases=(("training", 1.25), ("check of the exported files", 0.5)),
        total_seconds=9.5,
        # Tuning's cells are ours, but escaped as any text: a hostile one must stay text.
        tuning_table=(("trial", "optimizer"), ("0 *", SCRIPT_LABEL), ("1", "adam")),
        tuning_choice=f"Tuning keeps trial 0 {HOSTILE_FILE}",
    )
    return report_content.ReportContent(**{**content.__dict__, **changes})


class Elements(html.parser.HTMLParser):
    """Every start tag of a page, with its attributes, and the page's text."""

    def __init__(self, page):
        super().__init__(convert_charrefs=True)
        self.tags, self.text = [], []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def decoded_images(page):
    """[(format, (width, height))] of every <img> of a page; each must be a data: URI."""
    found = []
    for tag, attrs in Elements(page).tags:
        if tag == "img":
            match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", attrs["src"])
            assert match, attrs["src"][:60]
            image = Image.open(io.BytesIO(base64.b64decode(match.group(2))))
            image.load()
            assert image.format.lower() == match.group(1)
            found.append((image.format, image.size))
    return found


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """hostile_content's report folder. -> (folder, {file name: bytes}, seconds to write)."""
    folder = tmp_path_factory.mktemp("report") / "report"
    started = time.perf_counter()
    report_page.write_report(str(folder), hostile_content())
    seconds = time.perf_counter() - started
    files = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    return folder, files, seconds


def test_hostile_labels_and_file_names_are_text_not_markup(written):
    _, files, _ = written
    page = files["report.html"].decode("utf-8")
    for raw in (SCRIPT_LABEL, HOSTILE_FILE, "<b>bold</b>"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;.jpg" in page
    assert "a&amp;b &quot;quoted&quot; &#x27;x&#x27;" in page
    parsed = Elements(page)
    tags = {tag for tag, _ in parsed.tags}
    assert not tags & {"script", "iframe", "object", "embed", "link", "form", "base"}
    # A thumbnail's caption has a <b> of ours; the path's <b>bold</b> is text.
    text = "".join(parsed.text)
    for raw in (SCRIPT_LABEL, HOSTILE_FILE, SECRET_PATH, AMPERSAND_LABEL):
        assert raw in text
    assert not [attrs for _, attrs in parsed.tags if any(k.startswith("on") for k in attrs)]


def test_a_name_that_is_not_utf8_shows_as_an_escape():
    page = report_page.render_page(hostile_content(), {})
    assert "caf\\udce9" in page
    page.encode("utf-8")  # a lone surrogate would not encode
    assert report_page.text("a\u202eb\x07") == "a\\u202eb\\x07"  # bidi override, bell


def test_page_loads_and_runs_nothing_every_picture_is_a_data_uri_that_decodes(written):
    _, files, _ = written
    page = files["report.html"].decode("utf-8")
    policy = [attrs for tag, attrs in Elements(page).tags
              if tag == "meta" and attrs.get("http-equiv") == "Content-Security-Policy"]
    assert policy and policy[0]["content"].startswith("default-src 'none'; img-src data:;")
    images = decoded_images(page)
    thumbnails = len(hostile_content().thumbnails)
    assert [f for f, _ in images].count("JPEG") == thumbnails == 3
    assert [f for f, _ in images].count("PNG") == 4  # two curves, two matrices
    assert all(max(size) <= report_content.THUMBNAIL_SIZE for f, size in images if f == "JPEG")
    for tag, attrs in Elements(page).tags:
        assert "href" not in attrs and (tag == "img" or "src" not in attrs)
    # Each PNG file beside the page is the picture embedded in it.
    for name in output_paths.REPORT_ENTRIES - {"report.html", "results.csv"}:
        assert base64.b64encode(files[name]).decode() in page


def test_folder_holds_exactly_the_entries_output_paths_may_replace(written):
    folder, files, _ = written
    assert set(files) == output_paths.REPORT_ENTRIES
    assert sorted(os.listdir(folder.parent)) == ["report"]  # no temporary folder left


def test_csv_has_one_row_per_evaluation_of_each_phase(written):
    _, files, _ = written
    rows = list(csv.DictReader(io.StringIO(files["results.csv"].decode("utf-8"))))
    assert tuple(rows[0]) == report_page.CSV_COLUMNS
    history = [("training", p) for p in TRAINING_HISTORY] + [
        ("fine-tuning", p) for p in FINE_TUNING_HISTORY]
    assert len(rows) == len(history)
    for row, (phase, p) in zip(rows, history):
        assert row["phase"] == phase and int(row["step"]) == p.step
        assert int(row["validation_images"]) == p.validation_images
        for column in report_page.CSV_COLUMNS[2:7]:
            value = getattr(p, column)
            if value is None:
                assert row[column] == ""
            elif math.isnan(value):
                assert row[column] == "nan"
            else:
                assert float(row[column]) == value


def test_an_earlier_report_is_replaced_whole(written, tmp_path):
    folder = tmp_path / "report"
    report_page.write_report(str(folder), hostile_content())
    assert (folder / "fine_tuning_curves.png").exists()
    report_page.write_report(str(folder), hostile_content(history={"training": TRAINING_HISTORY}))
    # The second run did not fine-tune: its folder has no fine-tuning curves left over.
    assert not (folder / "fine_tuning_curves.png").exists()
    assert sorted(os.listdir(tmp_path)) == ["report"]


@pytest.mark.parametrize("foreign", ["photo.jpg", "report.html/notes.txt"])
def test_a_folder_holding_other_files_is_refused_and_left_as_it_was(tmp_path, tiny_module, foreign):
    folder = tmp_path / "mine"
    (folder / foreign).parent.mkdir(parents=True)
    (folder / foreign).write_text("precious")
    with pytest.raises(FileExistsError):
        report_page.write_report(str(folder), hostile_content())
    assert (folder / foreign).read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == ["mine"]
    # And before any work, in one line.
    settings = helpers.retrain_settings(tmp_path, str(tmp_path / "data"), tiny_module,
                                        report_dir=str(folder))
    config = config_lib.from_flat(settings)
    with pytest.raises(output_paths.PathError, match="--report_dir=.* holds files this suite"):
        output_paths.check_output_paths(config.data, config.module, config.outputs, "")


def test_report_dir_is_an_output_the_path_policy_holds(tmp_path, tiny_module):
    image_dir = str(tmp_path / "data")
    settings = helpers.retrain_settings(tmp_path, image_dir, tiny_module,
                                        report_dir=str(tmp_path / "report"))
    listed = output_paths.outputs_of(config_lib.from_flat(settings).outputs, "")
    assert ("report_dir", settings["report_dir"]) in listed
    for report_dir, match in (
            (os.path.join(image_dir, "report"), "report_dir=.* is inside --image_dir"),
            (settings["summaries_dir"], "summaries_dir=.* is the same as --report_dir"),
            (os.path.dirname(settings["output_graph"]), "output_graph=.* is inside --report_dir")):
        config = config_lib.from_flat({**settings, "report_dir": report_dir})
        with pytest.raises(output_paths.PathError, match=match):
            output_paths.check_output_paths(config.data, config.module, config.outputs, "")
    off = config_lib.from_flat({**settings, "report_dir": ""})
    assert "report_dir" not in dict(output_paths.outputs_of(off.outputs, ""))
    off.validate()


def test_report_dir_naming_a_page_is_refused():
    with pytest.raises(config_lib.UsageError, match="names the report's folder"):
        config_lib.OutputConfig(report_dir="/tmp/out/report.html").validate()


def test_a_run_without_evaluated_sets_or_validation_images_still_has_a_page(tmp_path):
    history = {"training": [point(s, train_accuracy=1.0, train_cross_entropy=0.1) for s in (5, 9)]}
    content = hostile_content(evaluations={}, thumbnails=(), artifacts=None, history=history,
                              phases=())
    report_page.write_report(str(tmp_path / "r"), content)
    assert sorted(os.listdir(tmp_path / "r")) == ["report.html", "results.csv",
                                                  "training_curves.png"]
    page = (tmp_path / "r" / "report.html").read_text()
    assert "Validation set: no images" in page and "Test set: no images" in page
    assert len(decoded_images(page)) == 1
    rows = list(csv.reader(io.StringIO((tmp_path / "r" / "results.csv").read_text())))
    assert rows[1] == ["training", "5", "1.0", "0.1", "", "", "", "0"]


def test_ten_thousand_classes_keep_the_page_and_its_pictures_bounded(ten_thousand_classes):
    truth, predictions, labels, report = ten_thousand_classes
    report = {**report, "misclassified": []}
    content = hostile_content(
        labels=tuple(labels), evaluations={"testing": report}, thumbnails=(),
        counts=dataset_lib.counts_by_class(dataset_lib.Dataset("", labels, [])))
    files = report_page.report_files(content)
    page = files["report.html"].decode("utf-8")
    assert len(page) < 1_500_000
    assert page.count("<tr>") < 2 * report_page.MAX_PAGE_CLASSES + 40
    assert "The 100 classes with the lowest F1, of 10000" in page
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        width, height = Image.open(io.BytesIO(files[name])).size
        assert width <= 1100 and height <= 1000
    # class 5's 20 images taken for class 9 make both among the most confused
    shown, matrix, totals = report_plots.matrix_of(report["confusion_counts"], labels)
    assert len(shown) == report_plots.MAX_MATRIX_CLASSES and {5, 9} <= set(shown.tolist())
    assert matrix[list(shown).index(5), list(shown).index(9)] >= 20
    assert totals[list(shown).index(5)] == 23


def test_matrix_counts_and_shares_are_those_of_the_report():
    report = evaluation.evaluate(helpers.TRUTH, helpers.PREDICTED, helpers.LABELS)
    shown, matrix, totals = report_plots.matrix_of(report["confusion_counts"], helpers.LABELS)
    assert matrix.tolist() == evaluation.dense_matrix(report["confusion_counts"], 4).tolist()
    assert totals.tolist() == [4, 2, 4, 0]
    # Drawn either way without a maths parser error on "$...$" or a surrogate in a name.
    for normalized in (False, True):
        png = report_plots.confusion_png(report["confusion_counts"],
                                         [MATHS_LABEL, NOT_UTF8_LABEL, "c", "d"], "t", normalized)
        assert Image.open(io.BytesIO(png)).format == "PNG"


def test_thumbnails_come_grouped_by_true_class_the_most_confident_first():
    def thumb(label, confidence):
        return report_content.Thumbnail(f"{label}{confidence}", label, "x", confidence, b"")
    shown = report_content.grouped_worst_first(
        [thumb("a", 0.5), thumb("b", 0.9), thumb("a", 0.7), thumb("b", 0.6), thumb("c", 0.8)])
    assert [(t.true_label, t.confidence) for t in shown] == [
        ("b", 0.9), ("b", 0.6), ("c", 0.8), ("a", 0.7), ("a", 0.5)]


def test_thumbnails_are_the_images_as_the_module_saw_them(tmp_path):
    # Four test images of flat colours; three misclassified, one of them undecodable.
    colours = {"red.png": (250, 0, 0), "green.png": (0, 250, 0), "blue.png": (0, 0, 250)}
    paths = []
    for name, colour in colours.items():
        helpers.write_image(str(tmp_path / "c" / name), np.full((300, 200, 3), colour, np.uint8))
        paths.append(str(tmp_path / "c" / name))
    (tmp_path / "c" / "broken.jpg").write_bytes(b"not a JPEG")
    paths.append(str(tmp_path / "c" / "broken.jpg"))
    images = [dataset_lib.Image(f"c/{os.path.basename(p)}", "class_0", 0, "testing") for p in paths]
    run = helpers.prepared_run(
        {"training": (np.zeros([0, 2]), [], []), "validation": (np.zeros([0, 2]), [], []),
         "testing": (np.zeros([4, 2]), [0, 0, 0, 0], images)},
        2, source=image_pipelines.ImageFiles(paths), input_size=(150, 160))
    report = {"misclassified": [
        {"image": i.path, "true": "class_0", "predicted": "class_1", "confidence": c}
        for i, c in zip(images[1:], (0.6, 0.9, 0.99))]}
    thumbnails = report_content.thumbnails_of(run, report, "testing")
    assert [t.path for t in thumbnails] == ["c/blue.png", "c/green.png"]  # broken.jpg left out
    for thumbnail, colour in zip(thumbnails, ((0, 0, 250), (0, 250, 0))):
        image = Image.open(io.BytesIO(thumbnail.jpeg))
        assert image.format == "JPEG" and image.size == (128, 120)  # 160 x 150, shrunk
        assert np.abs(np.asarray(image, np.int64).mean((0, 1)) - colour).max() < 12


def test_settings_show_the_flags_that_matter():
    config = config_lib.RetrainConfig(
        data=config_lib.DataConfig(image_dir="photos"),
        training=config_lib.TrainingConfig(random_seed=7, dropout=0.25)).with_seed(7)
    settings = dict(report_content.settings_of(config))
    assert settings["image_dir"] == "photos" and settings["random_seed"] == "7"
    assert settings["dropout"] == "0.25" and settings["learning_rate"] == "0.01"
    assert "tfrecord_dir" not in settings and "flip_left_right" not in settings


def test_writing_the_report_takes_about_a_second_or_less(written):
    # Not a timed assertion (the machine may be busy): the measured time is printed for
    # the README, and a gross regression (minutes) still fails.
    _, _, seconds = written
    print(f"report folder of 5 classes, 3 thumbnails, both phases written in {seconds:.2f} s")
    assert seconds < 60


def test_command_line_run_writes_the_report_folder(trained):
    settings, log = trained["settings"], trained["process"].stderr
    folder = settings["report_dir"]
    assert f"Wrote report page {os.path.join(folder, 'report.html')}" in log
    assert set(os.listdir(folder)) == output_paths.REPORT_ENTRIES - {"fine_tuning_curves.png"}
    with open(os.path.join(folder, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    logged = re.findall(r"Step (\d+)/\d+: train accuracy ([\d.]+)%, cross entropy ([\d.]+), "
                        r"validation accuracy ([\d.]+)%", log)
    assert len(rows) == len(logged) == settings["how_many_training_steps"] // settings[
        "eval_step_interval"]
    for row, (step, train, entropy, validation) in zip(rows, logged):
        assert row["phase"] == "training" and row["step"] == step
        assert f"{100 * float(row['train_accuracy']):.1f}" == train
        assert f"{float(row['train_cross_entropy']):.4f}" == entropy
        assert f"{100 * float(row['validation_accuracy']):.1f}" == validation
    with open(os.path.join(folder, "report.html"), encoding="utf-8") as f:
        page = f.read()
    formats = [f for f, _ in decoded_images(page)]
    assert formats.count("PNG") == 3  # curves and two matrices
    assert formats.count("JPEG") == page.count('<figure class="thumb">')  # any test mistakes
    text = "".join(Elements(page).text)
    for expected in ("frozen graph", "SavedModel", settings["output_graph"],
                     "report (tables, JSON)", "check of the exported files",
                     settings["tfhub_module"], "Test set: accuracy 100.0%"):
        assert expected in text


def test_a_rerun_takes_the_pictures_it_already_drew_from_the_folder_it_replaces(
        tmp_path, monkeypatch):
    folder = str(tmp_path / "report")
    drawn = []
    for name in ("curves_png", "confusion_png"):
        real = getattr(report_plots, name)
        monkeypatch.setattr(report_plots, name, lambda *a, real=real, **k: drawn.append(
            a[-2] if isinstance(a[-1], bool) else a[1]) or real(*a, **k))

    def write(**changes):
        drawn.clear()
        memo = picture_memo.PictureMemo.of_run(str(tmp_path / "cache"), folder)
        report_page.write_report(folder, hostile_content(**changes), memo)
        return {name: (tmp_path / "report" / name).read_bytes()
                for name in os.listdir(folder) if name.endswith(".png")}

    first = write()
    assert len(drawn) == 4 and len(first) == 4  # two curves, two matrices
    assert write() == first and drawn == []  # nothing drawn again, the same bytes
    # One point of training changed: that picture only is drawn again.
    changed = [point(1, train_accuracy=0.5), *TRAINING_HISTORY[1:]]
    assert write(history={"training": changed, "fine-tuning": FINE_TUNING_HISTORY}) != first
    assert drawn == ["Training the final layer on bottlenecks"]
    # A picture file changed in the folder is drawn again, never taken as it is.
    with open(os.path.join(folder, report_page.MATRIX), "r+b") as f:
        f.seek(100)
        f.write(b"\0")
    again = write(history={"training": changed, "fine-tuning": FINE_TUNING_HISTORY})
    assert len(drawn) == 1 and again[report_page.MATRIX] == first[report_page.MATRIX]
    # Without a memo (no local cache folder), every picture is drawn.
    drawn.clear()
    report_page.write_report(folder, hostile_content(), None)
    assert len(drawn) == 4


def test_picture_keys_hold_every_value_exactly():
    values = np.arange(2000, dtype=np.int64)  # numpy's repr would shorten it to "..."
    changed = values.copy()
    changed[1000] = -1
    assert picture_memo.canonical([values]) != picture_memo.canonical([changed])
    assert picture_memo.canonical([point(1, train_accuracy=math.nan)]) != \
        picture_memo.canonical([point(1, train_accuracy=math.inf)])
