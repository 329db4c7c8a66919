"""retrain_suite.training (through a whole run): what the final layer is trained on."""

import re

import numpy as np
from conftest import retrain_settings, synthetic_image, write_image

from retrain_suite import config as config_lib
from retrain_suite import job


def test_test_images_are_never_trained_on(tmp_path, tiny_module, caplog):
    # Labels drawn at random, independent of the pictures: nothing generalises,
    # but the layer can memorise what it trains on. So it must reach ~100% on
    # its training images and stay near chance on the test images; had the
    # test images been trained on, they would be memorised too.
    rng = np.random.RandomState(3)
    image_dir = tmp_path / "random_labels"
    for i in range(80):
        colour = tuple(int(c) for c in rng.randint(0, 256, 3))
        pattern = ("solid", "stripes", "checker")[rng.randint(3)]
        label = "ab"[rng.randint(2)]
        write_image(str(image_dir / label / f"img{i}.png"),
                    synthetic_image(colour, pattern, 32, 32, rng), "PNG")
    settings = retrain_settings(
        tmp_path, str(image_dir), tiny_module, testing_percentage=40, validation_percentage=0,
        how_many_training_steps=2000, learning_rate=0.01, hidden_units=512,
        eval_step_interval=2000, optimizer="adam",
    )
    caplog.set_level("INFO")
    accuracy = job.run_retraining(config_lib.from_flat(settings))
    train_accuracy = float(re.findall(r"train accuracy ([\d.]+)%", caplog.text)[-1])
    assert train_accuracy >= 95, caplog.text
    # ~32 test images: by chance, 75% or more has a probability below 0.3%
    # (binomial, n=32, p=0.5); memorised, they would score ~100%.
    assert accuracy is not None and accuracy < 0.75, accuracy
