"""The retraining suite's library: everything behind retrain.py, label_image.py,
pre_input.py, input_pipeline.py and python -m bottleneck.

Rooms, in the order an image goes through them:

- `dataset`: scan a class-per-folder tree, split by a stable hash, count, report copies.
- `preparation`: pre_input.py's decode check and split lists.
- `tfrecords`: write and read the same dataset as TFRecord files.
- `images`: reading image files, the one preprocessing function, distortions,
  the image sources and their tf.data pipelines.
- `bottleneck`: the feature-vector module, the on-disk cache, the batched computation.
- `run_data`: the run as named data (Split, PreparedRun, Predictions,
  TrainedModel), built once the bottlenecks exist; what every later stage reads.
- `vector_batches`: the tf.data pipelines of cached vectors the final layer trains on.
- `final_layer`, `schedules`: the new layer, its loss, its learning rate.
- `training`: the training loop and the choice of the layer kept.
- `fine_tuning`, `fine_tuning_checkpoint`: training the module with the layer on
  images; its resumable checkpoint.
- `evaluation`, `evaluation_pictures`, `reporting`: metrics and tables,
  TensorBoard pictures, and both applied to a run's sets with the JSON report.
- `export`, `atomic_files`: frozen graph, labels, SavedModel, written whole or not at all.
- `tflite`, `tflite_metadata`: the TFLite file, its quantization and its metadata.
- `onnx_export`, `onnx_model`: the ONNX file (tf2onnx, the optional `[onnx]` extra) and
  running one with onnxruntime.
- `artifact_check`: every exported file run on the test images, one table.
- `classifier`, `graph_checks`: running an exported graph or TFLite file on new
  images (label_image.py); what a graph must pass before it is imported.
- `config`, `command_config`, `job`: the typed configurations of the commands,
  and the retraining run itself, stage by stage.
- `output_paths`, `memory_budget`: where a run may write; what it needs in memory.
- `errors`: SuiteError, the base of every error a user can cause, and one_line.
- `console`: third parties' notes kept off the console unless asked for.
- `phases`: where a run's time goes, one table at the end.
- `report_content`, `report_page`, `report_plots`: the --report_dir folder of a
  finished run (report.html, results.csv, the pictures as PNG).
- `cli`: the command lines (flags -> configuration -> the library).

Library functions take a configuration section or plain values; only `cli` reads flags.
"""
