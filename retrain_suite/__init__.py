"""The retraining suite's library: everything behind retrain.py, label_image.py,
pre_input.py, input_pipeline.py and python -m bottleneck.

Rooms, in the order an image goes through them:

- `dataset`: scan a class-per-folder tree, split by a stable hash, count, report copies.
- `preparation`: pre_input.py's decode check and split lists.
- `tfrecords`: write and read the same dataset as TFRecord files.
- `images`: reading image files, the one preprocessing function, distortions,
  the image sources and their tf.data pipelines.
- `bottleneck`: the feature-vector module, the on-disk cache, the batched computation.
- `vector_batches`: the tf.data pipelines of cached vectors the final layer trains on.
- `final_layer`, `schedules`: the new layer, its loss, its learning rate.
- `training`: the training loop and the choice of the layer kept.
- `evaluation`, `reporting`: metrics, tables, JSON, TensorBoard pictures.
- `export`, `atomic_files`: frozen graph, labels, SavedModel, written whole or not at all.
- `classifier`: running an exported graph on new images (label_image.py).
- `config`, `job`: the typed configuration of a run, and the run itself.
- `output_paths`, `memory_budget`: where a run may write; what it needs in memory.
- `cli`: the command lines (flags -> configuration -> the library).

Library functions take a configuration or plain values; only `cli` reads flags.
"""
