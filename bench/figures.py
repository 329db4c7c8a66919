"""Each figure of the benchmark beside its yardstick, measured in one `Bench`."""

import dataclasses
import os
import shutil
import time

import commands
import numpy as np
import packed_figure
import photos
import tensorflow as tf
import time_to_classifier
import yardsticks
from absl import logging

from retrain_suite import config as config_lib
from retrain_suite import final_layer, run_data
from retrain_suite import fine_tuning as fine_tuning_lib
from retrain_suite.bottleneck import cache as cache_lib
from retrain_suite.bottleneck import compute
from retrain_suite.bottleneck import module as module_lib
from retrain_suite.dataset import split as split_lib
from retrain_suite.images import files as image_files
from retrain_suite.images import pipelines as image_pipelines


@dataclasses.dataclass(frozen=True)
class Settings:
    """The benchmark's flags that the figures read."""

    batch_size: int
    classic_steps: int
    classifier_module: str
    eval_interval: int
    fine_tune_batch: int
    fine_tune_steps: int
    images: int
    label_images: int
    packed_entries: int
    beam_rounds: int
    limit_batch_sizes: list
    rounds: int
    rss_counts: list
    rss_module: str
    steps: int
    train_batch: int
    warm_images: int


@dataclasses.dataclass
class Row:
    figure: str
    ours: str
    yardstick: str
    ratio: float = None  # ours / yardstick, in the direction where bigger is better
    target: str = ""
    met: bool = None  # None: not applicable

    def cells(self):
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}x"
        met = {True: "yes", False: "**no**", None: "n/a"}[self.met]
        return [self.figure, self.ours, self.yardstick, ratio, self.target, met]


def markdown_table(rows):
    lines = ["| figure | ours | yardstick | ratio | target | met? |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


class Bench:
    def __init__(self, work_dir, handle, settings):
        self.work, self.handle, self.settings = work_dir, handle, settings
        self.limit = None  # (images/s, batch size) of the limit (c), once measured
        self._warm = None  # the warm-rerun data, once written
        self.rows = []
        self.fp32_rate = None
        self._photos = None

    def folder(self, *names):
        path = os.path.join(self.work, *names)
        os.makedirs(path, exist_ok=True)
        return path

    def photos(self):
        if self._photos is None:
            folder = self.folder("photos")
            self._photos = photos.written_photos(folder, self.settings.images)
            if self._photos is None:
                logging.info("Writing %d photos...", self.settings.images)
                photos.clear_written(folder)  # no photo of an earlier run left among them
                self._photos = photos.write_photos(folder, self.settings.images)
            else:  # a --work_dir kept from an earlier run
                logging.info("Using the %d photos written before in %s.", len(self._photos),
                             folder)
        return self._photos

    def log_round(self, what, number, rates):
        """Log one round's rates ({name: images/s}) of a figure measured in rounds."""
        logging.info("%s round %d of %d: %s", what, number + 1, self.settings.rounds,
                     ", ".join(f"{name} {rate:.2f}" for name, rate in rates.items()))

    def beam(self):
        """The Beam fill against the in-process fill (beam_figure.py)."""
        import beam_figure  # imports apache_beam: only when the figure is asked for

        beam_figure.beam_rows(self)

    def add(self, *args, **kwargs):
        row = Row(*args, **kwargs)
        logging.info("%s", " | ".join(row.cells()))
        self.rows.append(row)

    def ours_round(self, number, precision="float32"):
        """One compute_bottlenecks run over the photos, into a cache of its own. -> (images/s, batch)."""
        result = compute.compute_bottlenecks(
            self.photos(), self.handle, self.folder("cache", f"round{number}"),
            batch_size=self.settings.batch_size, precision=precision,
        )
        return result.steady_rate, result.batch_size

    def ours_fp32(self):
        """Our float32 rate: the best of --rounds runs (when not measured with the limit)."""
        if self.fp32_rate is None:
            best = max(self.ours_round(r) for r in range(self.settings.rounds))
            self.fp32_rate, self.fp32_batch = best
        return self.fp32_rate

    def batch_words(self):
        how = "given" if self.settings.batch_size else "measured"
        return f"batch {self.fp32_batch}, {how}"

    def bottlenecks(self):
        """Rows 1a and 1b. Each of --rounds rounds measures the limit, ours and the
        classic method, one after the other; each figure is its best round, so a
        slow spell of the machine during one of them does not decide a ratio."""
        paths = self.photos()
        graph = tf.Graph()
        with graph.as_default():
            module = module_lib.load(self.handle)
        images = yardsticks.decoded_in_memory(paths, module.height, module.width)
        sizes = [int(b) for b in self.settings.limit_batch_sizes]
        limits, ours_rates, classics = [], [], []
        for number in range(self.settings.rounds):
            limits.append(yardsticks.limit_rate(images, self.handle, sizes))
            ours_rates.append(self.ours_round(number))
            classics.append(
                yardsticks.classic_bottlenecks(paths, self.handle, self.folder("classic_text"))
            )
            logging.info(
                "Round %d of %d: limit %.2f, ours %.2f, classic %.2f images/s", number + 1,
                self.settings.rounds, limits[-1][0], ours_rates[-1][0], classics[-1][0],
            )
        del images
        limit, best_batch = max(limits)
        self.fp32_rate, self.fp32_batch = max(ours_rates)
        ours = self.fp32_rate
        classic, parts = max(classics, key=lambda c: c[0])
        self.limit = (limit, best_batch)
        rounds = "" if self.settings.rounds == 1 else f", best of {self.settings.rounds} rounds"
        self.add(
            "1a. bottlenecks (compute_bottlenecks, in-process) vs the limit (c)",
            f"{ours:.2f} img/s ({self.batch_words()}{rounds})",
            f"{limit:.2f} img/s (batch {best_batch}{rounds})",
            ours / limit,
            ">= 0.90x",
            ours / limit >= 0.9,
        )
        self.add(
            "1b. bottlenecks vs the classic method (a)",
            f"{ours:.2f} img/s",
            f"{classic:.2f} img/s (per image: "
            + ", ".join(f"{part} {1000 * seconds:.0f} ms" for part, seconds in parts.items())
            + f"{rounds})",
            ours / classic,
            ">= 1.30x",
            ours / classic >= 1.3,
        )

    def mixed_precision(self):
        try:
            precision = module_lib.mixed_precision_type()
        except module_lib.ModuleError as e:
            self.add("2. --mixed_precision", f"not available: {e}", "", None, ">= 1.50x", None)
            return
        fp32 = self.ours_fp32()
        # Best of as many rounds as float32 had (their caches are keyed apart).
        mixed = max(self.ours_round(r, precision)[0] for r in range(self.settings.rounds))
        self.add(
            f"2a. bottlenecks in {precision} (`--mixed_precision`) vs float32",
            f"{mixed:.2f} img/s",
            f"{fp32:.2f} img/s",
            mixed / fp32,
            ">= 1.50x",
            mixed / fp32 >= 1.5,
        )
        accuracies = {}
        for name, extra in (("float32", []), (precision, ["--mixed_precision"])):
            _, output = commands.run_command(
                commands.retrain_command(
                    self.folder("photos"),
                    self.handle,
                    self.folder("cache"),
                    self.folder("retrain_" + name),
                    self.settings.steps,
                    "--testing_percentage=30",
                    *extra,
                ),
                f"retrain.py ({name})",
            )
            accuracies[name] = commands.test_accuracy(output)
        (ours, n), (base, _) = accuracies[precision], accuracies["float32"]
        self.add(
            f"2b. final test accuracy, {precision} vs float32 bottlenecks "
            f"(seed 1, {self.settings.steps} steps)",
            f"{ours:.1f}% (N={n})",
            f"{base:.1f}%",
            None,
            "within 1 point",
            abs(ours - base) <= 1.0,
        )

    def warm_data(self):
        """Warm-rerun photos with our cache and classic text files filled. -> dict."""
        if self._warm is not None:
            return self._warm
        count = self.settings.warm_images
        logging.info("Writing %d small photos with cached bottlenecks...", count)
        folder = self.folder("warm_photos")
        rng = np.random.RandomState(1)
        cache_dir = self.folder("warm_cache")
        graph = tf.Graph()
        with graph.as_default():
            module = module_lib.load(self.handle)
            dimension = int(
                module(tf.compat.v1.placeholder(tf.float32, [None, module.height, module.width, 3])).shape[-1]
            )
        means = rng.normal(size=(len(photos.CLASS_STYLES), dimension)).astype(np.float32)
        cache = cache_lib.BottleneckCache(
            cache_dir, cache_lib.module_key(self.handle, module.height, module.width)
        )
        text_dir = self.folder("warm_text")
        paths, labels, splits, texts, contents = [], [], [], [], []
        for i in range(count):
            label = i % len(photos.CLASS_STYLES)
            pixels = rng.randint(0, 256, (24, 32, 3)).astype(np.uint8)
            path = os.path.join(folder, f"class{label}", f"img{i:05d}.jpg")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(photos.encode(pixels, "JPEG"))
            vector = means[label] + rng.normal(size=dimension).astype(np.float32)
            content = image_files.inspect_image_file(path).sha1
            cache.store(content, vector)
            text = os.path.join(text_dir, f"img{i:05d}.txt")
            with open(text, "w") as f:
                f.write(",".join(str(x) for x in vector))
            paths.append(path)
            labels.append(label)
            splits.append(split_lib.split_for(f"class{label}/img{i:05d}.jpg", 10, 10))
            texts.append(text)
            contents.append(content)
        self._warm = dict(
            folder=folder,
            cache_dir=cache_dir,
            cache=cache,
            paths=paths,
            labels=np.array(labels, np.int64),
            splits=np.array(splits),
            texts=texts,
            contents=contents,
            dimension=dimension,
        )
        return self._warm

    def training(self):
        warm = self.warm_data()
        vectors = np.stack([warm["cache"].lookup(c) for c in warm["contents"]])
        classes = len(photos.CLASS_STYLES)
        ours = yardsticks.our_training_rate(
            vectors,
            warm["labels"],
            self.settings.steps,
            self.settings.train_batch,
            classes,
            self.settings.eval_interval,
        )
        classic = yardsticks.classic_training_rate(
            warm["texts"], warm["labels"], self.settings.classic_steps, self.settings.train_batch, classes
        )
        self.add(
            f"3. training steps/s, batch {self.settings.train_batch}, warm cache",
            f"{ours:.0f} steps/s ({self.settings.steps} steps, "
            f"evaluation every {self.settings.eval_interval})",
            f"{classic:.1f} steps/s (b) ({self.settings.classic_steps} steps)",
            ours / classic,
            ">= 50x",
            ours / classic >= 50,
        )

    def warm_rerun(self):
        warm = self.warm_data()
        out = self.folder("warm_out")
        command = commands.retrain_command(
            warm["folder"], self.handle, warm["cache_dir"], out, self.settings.steps)
        # A rerun is the same command a second time: the first (every vector already
        # cached, untimed) leaves what a real earlier run leaves, the check memo included.
        commands.run_command(command, "retrain.py (the run before the warm rerun)")
        ours, output = commands.run_command(command, "retrain.py (warm rerun)")
        if not commands.computed_none(output):
            raise RuntimeError("The warm rerun computed bottlenecks:\n" + output[-2000:])
        classic = yardsticks.classic_warm_rerun(
            self.handle,
            warm["texts"],
            warm["labels"],
            warm["splits"],
            self.settings.steps,
            self.settings.train_batch,
            len(photos.CLASS_STYLES),
            out,
        )
        self.add(
            f"4. warm rerun end to end ({self.settings.warm_images} images, "
            f"{self.settings.steps} steps, export)",
            f"{ours:.1f} s",
            f"{classic:.1f} s (classic, in-process)",
            classic / ours,
            ">= 10x",
            classic / ours >= 10,
        )
        # Every vector was cached and nothing changed: start-up and training are the work.
        start_up = time_to_classifier.start_up_seconds()
        command = time_to_classifier.Command(
            warm["folder"], self.handle, self.settings.steps, self.settings.train_batch,
            self.settings.eval_interval, out)
        training = time_to_classifier.training_seconds(
            warm["dimension"], len(photos.CLASS_STYLES), command)
        self.add(
            "4b. the same warm rerun vs start-up (`retrain.py --helpshort`) plus the training "
            "steps alone",
            f"{ours:.1f} s",
            f"{start_up + training:.1f} s (start-up {start_up:.1f} s + training {training:.1f} s)",
            ours / (start_up + training),
            "<= 1.50x",
            ours <= 1.5 * (start_up + training),
        )

    def classifier_command(self):
        return time_to_classifier.Command(
            self.folder("photos"), photos.module_path(self.settings.classifier_module, self.work),
            self.settings.steps, self.settings.train_batch, self.settings.eval_interval,
            self.folder("classifier"))

    def time_to_classifier(self):
        """Row 10: retrain.py, first run, cold cache, int8 .tflite and its check, against
        the serial limit (decode + forward of every photo + the training steps alone)."""
        paths = self.photos()
        command = self.classifier_command()
        for written in ("cache", "first"):  # what the run writes there: a cold cache, also
            path = os.path.join(command.work, written)  # in a --work_dir kept from before
            if os.path.isdir(path):
                shutil.rmtree(path)
        module = module_lib.load_shared(command.handle)
        with module.graph.as_default():  # the dimension of the training steps alone
            dimension = int(module(tf.compat.v1.placeholder(
                tf.float32, [None, module.height, module.width, 3])).shape[-1])
        seconds, output, phases = command.run("first", "retrain.py (time to classifier)")
        logging.info("Time by phase of the first run: %s", phases)
        if commands.computed_none(output):
            raise RuntimeError("The first run computed no bottlenecks:\n" + output[-2000:])
        limit = time_to_classifier.serial_limit(
            paths, command, (module.height, module.width), dimension,
            [int(b) for b in self.settings.limit_batch_sizes])
        self.add(
            f"10. time to classifier: `retrain.py` on {len(paths)} photos, "
            f"{os.path.basename(command.handle)}, cold cache, int8 `.tflite` and its check, "
            "vs the serial limit (decode + forward of every photo + the training steps alone)",
            f"{seconds:.1f} s (largest phases: {time_to_classifier.phase_words(phases)})",
            limit.words(),
            seconds / limit.total(),
            "<= 1.50x",
            seconds <= 1.5 * limit.total(),
        )

    def cache(self):
        warm = self.warm_data()
        entry = os.path.getsize(warm["cache"].path_for(warm["contents"][0]))
        text = np.mean([os.path.getsize(t) for t in warm["texts"]])
        blocks = os.stat(warm["cache"].path_for(warm["contents"][0])).st_blocks * 512
        self.add(
            f"5a. cache bytes per {warm['dimension']}-d bottleneck",
            f"{entry:,} B ({blocks:,} B allocated)",
            f"{text:,.0f} B (classic text)",
            text / entry,
            "<= 8,500 B",
            entry <= 8500,
        )
        cache = warm["cache"]
        start = time.monotonic()
        loaded = [cache.lookup(c, warm["dimension"]) for c in warm["contents"]]
        ours = len(loaded) / (time.monotonic() - start)
        assert all(v is not None for v in loaded)
        start = time.monotonic()
        for t in warm["texts"]:
            yardsticks.read_classic_text(t)
        classic = len(warm["texts"]) / (time.monotonic() - start)
        self.add(
            f"5b. cache load ({len(loaded)} entries, file-system cache warm)",
            f"{ours:,.0f} entries/s",
            f"{classic:,.0f} entries/s (classic text)",
            ours / classic,
            ">= 10,000/s",
            ours >= 10000,
        )

    def memory(self):
        handle = photos.module_path(self.settings.rss_module, self.work)
        peaks = {}
        counts = [int(c) for c in self.settings.rss_counts]
        for count in counts:
            folder = self.folder(f"rss_{count}")
            photos.write_photos(folder, count, seed=2, distinct=36)
            peaks[count] = commands.peak_rss_of_module(
                "bottleneck",
                [
                    f"--image_dir={folder}",
                    f"--tfhub_module={handle}",
                    f"--bottleneck_dir={self.folder(f'rss_cache_{count}')}",
                ],
                f"python -m bottleneck ({count} images)",
            )
            photos.clear_written(folder)
        small, large = counts[0], counts[-1]
        ratio = peaks[large] / peaks[small]
        self.add(
            f"6. peak RSS computing bottlenecks, {large} vs {small} images ({os.path.basename(handle)})",
            f"{peaks[large]:.0f} MiB",
            f"{peaks[small]:.0f} MiB",
            None,
            "<= 1.10x of the small run",
            ratio <= 1.10,
        )
        self.rows[-1].ratio = ratio

    def label_image(self):
        count = self.settings.label_images
        folder = self.folder("label_photos")
        paths = photos.write_photos(folder, count, seed=3, distinct=min(count, 36))
        graph = os.path.join(self.work, "retrain_float32", "graph.pb")
        if not os.path.exists(graph):
            commands.run_command(
                commands.retrain_command(
                    self.folder("photos") if self._photos else folder,
                    self.handle,
                    self.folder("cache"),
                    self.folder("retrain_float32"),
                    100,
                ),
                "retrain.py (graph for label_image)",
            )
        classes = sorted({os.path.dirname(p) for p in paths})
        seconds, output = commands.run_command(
            [
                "label_image.py",
                *[f"--image={c}" for c in classes],
                f"--graph={graph}",
                f"--labels={os.path.join(os.path.dirname(graph), 'labels.txt')}",
                "--top_k=1",
            ],
            "label_image.py",
        )
        ours = count / seconds
        seconds, _ = commands.run_command(
            [
                "-m",
                "bottleneck",
                f"--image_dir={folder}",
                f"--tfhub_module={self.handle}",
                f"--bottleneck_dir={self.folder('label_cache')}",
            ],
            "python -m bottleneck (label_image yardstick)",
        )
        bottlenecks = count / seconds
        self.add(
            f"7. `label_image.py` on {count} images vs `python -m bottleneck` on them (whole commands)",
            f"{ours:.2f} img/s",
            f"{bottlenecks:.2f} img/s",
            ours / bottlenecks,
            ">= 0.80x",
            ours / bottlenecks >= 0.8,
        )

    def fine_tuning(self):
        """Our fine-tuning steps (images read, decoded, through the module and back) vs (d)."""
        batch, steps = self.settings.fine_tune_batch, self.settings.fine_tune_steps
        paths = self.photos()
        labels = [i % 3 for i in range(len(paths))]
        config = config_lib.from_flat({
            "image_dir": self.folder("photos"), "tfhub_module": self.handle, "random_seed": 1,
            "fine_tune_steps": steps, "fine_tune_batch_size": batch,
        })
        with tf.Graph().as_default():  # its input size only; build_graph loads it for real
            module = module_lib.load(self.handle)
        size = module.height, module.width
        run = run_data.images_only(image_pipelines.ImageFiles(paths), labels, ["0", "1", "2"], size,
                                   config.data.max_image_pixels)
        g = fine_tuning_lib.build_graph(config, run, {}, 0, final_layer.LossSettings())
        with tf.compat.v1.Session(graph=g.graph, config=module_lib.session_config()) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(g.iterator_init)
            for _ in range(2):  # the first steps pay for graph optimisation
                sess.run(g.train_step)
            start = time.monotonic()
            for _ in range(steps):
                sess.run(g.train_step)
            ours = steps * batch / (time.monotonic() - start)
        module = g.module
        images = yardsticks.decoded_in_memory(paths[:batch], module.height, module.width)
        limit = yardsticks.fine_tuning_limit_rate(images, self.handle, batch, steps)
        self.add(
            f"9. fine-tuning images/s (batch {batch}, {steps} steps) vs the module's "
            "forward-plus-backward limit (d) on a pre-decoded batch",
            f"{ours:.2f} img/s",
            f"{limit:.2f} img/s",
            ours / limit,
            ">= 0.90x",
            ours / limit >= 0.9,
        )

    def gpu(self):
        if not tf.config.list_physical_devices("GPU"):
            self.add(
                "8. GPU: bottlenecks vs the limit (c) on the GPU",
                "no GPU was available on this machine",
                "",
                None,
                ">= 0.70x",
                None,
            )
            return
        if self.limit is None:
            self.bottlenecks()
        limit, batch = self.limit
        ours = self.ours_fp32()
        self.add(
            f"8. GPU ({module_lib.describe_device()}): bottlenecks vs the limit (c)",
            f"{ours:.2f} img/s",
            f"{limit:.2f} img/s (batch {batch})",
            ours / limit,
            ">= 0.70x",
            ours / limit >= 0.7,
        )

    def packed_store(self):
        packed_figure.measure(self, self.settings.packed_entries, self.settings.rounds)
