"""Install the retraining suite: `pip install -e .` (add `[test]` for the tests, `[gpu]` for CUDA)."""

from setuptools import setup

setup(
    name="retrain-suite",
    version="0.1.0",
    description=(
        "Retrain an image classifier on your own photos by transfer learning on a "
        "TF Hub image feature-vector module (a working replacement for TensorFlow's "
        "classic retrain.py)."
    ),
    python_requires=">=3.9",
    py_modules=[
        "atomic_files", "evaluation", "export", "final_layer", "input_pipeline",
        "label_image", "memory_budget", "output_paths", "pre_input", "retrain", "schedules",
        "command_startup",
    ],
    packages=["bottleneck"],
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "tensorflow-hub>=0.16,<0.17",
        "numpy",
        "pillow",
        "absl-py",
        # TensorFlow 2.21 no longer installs TensorBoard; the README's
        # `tensorboard --logdir` command needs it.
        "tensorboard>=2.16,<2.22",
    ],
    extras_require={
        "test": ["pytest", "ruff"],
        "gpu": ["tensorflow[and-cuda]>=2.16,<2.22"],
    },
    entry_points={
        "console_scripts": [
            "retrain=retrain:run",
            "label_image=label_image:run",
            "pre_input=pre_input:run",
        ],
    },
)
