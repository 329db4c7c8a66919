"""Install the retraining suite: `pip install -e .` (add `[test]` for the tests, `[gpu]` for CUDA,
`[onnx]` for --onnx_output_file and label_image.py on .onnx files, `[beam]` for the
cache fill on Apache Beam).

Installs one import package, `retrain_suite`, and the commands `retrain`,
`label_image` and `pre_input`; nothing else, so it never overwrites another
distribution's files (PyPI's `bottleneck` included).
"""

from setuptools import find_packages, setup

# --onnx_output_file converts with tf2onnx (1.17.0 is the release tested beside
# TensorFlow 2.21; it leaves protobuf and TensorFlow as they are); onnx reads the
# model back, and onnxruntime runs it (onnx 1.17 and onnxruntime 1.20 are the first
# with NumPy 2; onnx 1.23 and onnxruntime 1.32 tested; the models are opset 15).
ONNX = ["tf2onnx==1.17.0", "onnx>=1.17,<2", "onnxruntime>=1.20,<2"]
# The cache fill on Apache Beam (python -m bottleneck --runner=...): an extra, never a
# core dependency, because 2.77 pins protobuf < 7 and pillow < 13 (it resolves beside
# TensorFlow 2.21, tensorflow-hub 0.16, ai-edge-litert 2.3 and NumPy 2.4).
BEAM = ["apache-beam>=2.77,<3"]

setup(
    name="retrain-suite",
    version="0.1.0",
    description=(
        "Retrain an image classifier on your own photos by transfer learning on a "
        "TF Hub image feature-vector module (a working replacement for TensorFlow's "
        "classic retrain.py)."
    ),
    python_requires=">=3.9",
    packages=find_packages(include=["retrain_suite", "retrain_suite.*"]),
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "tensorflow-hub>=0.16,<0.17",
        # LiteRT's interpreter runs the TFLite export (tf.lite.Interpreter is deprecated);
        # 2.3 is the version tested beside TensorFlow 2.21. Its schema bindings and
        # flatbuffer tools write the metadata into the model.
        "ai-edge-litert>=2.3,<3",
        "numpy",
        "pillow",
        "absl-py",
        # The report page's curves and confusion matrices (report_plots, Agg backend).
        "matplotlib",
        # TensorFlow 2.21 no longer installs TensorBoard; the README's
        # `tensorboard --logdir` command needs it.
        "tensorboard>=2.16,<2.22",
    ],
    extras_require={
        # pytest-xdist: pytest.ini runs the suite on two worker processes. The ONNX
        # packages too, so that the ONNX tests always run. mkdocs: tests/test_docs.py
        # and .ci/run build docs/ with --strict (1.6 checks anchors). Beam too, so that
        # the Beam pipeline's tests always run.
        "test": ["pytest", "pytest-xdist>=3.5", "ruff", "mkdocs>=1.6,<2", *ONNX, *BEAM],
        "gpu": ["tensorflow[and-cuda]>=2.16,<2.22"],
        "onnx": ONNX,
        "beam": BEAM,
    },
    entry_points={
        "console_scripts": [
            "retrain=retrain_suite.cli.commands:retrain",
            "label_image=retrain_suite.cli.commands:label_image",
            "pre_input=retrain_suite.cli.commands:pre_input",
        ],
    },
)
