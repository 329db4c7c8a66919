"""Fixtures shared by the test files (image folders, generated modules, a trained run),
all offline, and the session's set-up; the helpers they use are in helpers.py."""

import signal
import threading

from retrain_suite.cli import startup

# The pytest workers import TensorFlow here; without this their C++ start-up lines
# land in pytest's output. The environment given is a throwaway: os.environ stays as
# it is, so the commands the tests start behave as a user's would.
startup.quiet_tensorflow(argv=[], environ={})

import helpers  # noqa: E402
import pytest  # noqa: E402
from absl import logging  # noqa: E402
from helpers import CLASSIC_DEFAULTS, make_dataset, retrain_settings, run_script  # noqa: E402

from retrain_suite import evaluation  # noqa: E402
from retrain_suite.bottleneck import make_module  # noqa: E402

# The Ctrl-C tests send SIGINT to the commands they start. A suite started with
# SIGINT ignored (a background job of a script, nohup) would pass that on to them,
# and they would run on: an ignored signal stays ignored across exec, while a
# handled one goes back to its default, which Python turns into Ctrl-C handling.
if (signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        and threading.current_thread() is threading.main_thread()):
    signal.signal(signal.SIGINT, signal.default_int_handler)


# In-process runs log through absl, which stays at WARNING until flags are parsed.
logging.set_verbosity(logging.INFO)


@pytest.fixture
def dataset_dir(tmp_path):
    return make_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_module(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("modules") / "tiny")
    make_module.write_module("tiny", path)
    return path


@pytest.fixture(scope="session")
def inception_module(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("modules") / "inception_v3")
    make_module.write_module("inception_v3", path)
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_module):
    """One real `retrain.py` command-line run on a 3-class dataset with the tiny module.

    -> dict with the settings used, the process (stdout/stderr), and the dataset folder.
    """
    root = tmp_path_factory.mktemp("trained")
    image_dir = make_dataset(root / "data", per_class=20)
    settings = retrain_settings(
        root, image_dir, tiny_module, validation_percentage=15, testing_percentage=25,
        saved_model_dir=str(root / "out" / "saved_model"), report_dir=str(root / "report"),
    )
    settings.update(CLASSIC_DEFAULTS)
    args = [f"--{name}={value}" for name, value in settings.items() if value is not None]
    args.append("--logging_verbosity=INFO")  # a classic flag too, but not part of the config
    process = run_script("retrain.py", *args, check=True)
    return {"settings": settings, "process": process, "image_dir": image_dir, "root": root}


@pytest.fixture(scope="module")
def ten_thousand_classes():
    """helpers.many_classes' 10,000 classes -> (truth, predictions, labels, their report)."""
    truth, predictions, labels = helpers.many_classes()
    return truth, predictions, labels, evaluation.evaluate(truth, predictions, labels)
