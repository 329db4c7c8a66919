r"""Retrain an image classifier on your own photos by transfer learning.

Put your photos in one subfolder per class and run:

    python retrain.py --image_dir data/

What happens:

1. Every image is assigned to the training, validation or testing set by a
   hash of its path (relative to --image_dir), so the split is the same on
   every run, on every machine.
2. A pretrained image feature-vector module (Inception V3 from TF Hub by
   default) turns each image into a "bottleneck": the vector of features the
   network computes just before its own classification layer. These are
   computed in batches once and cached under --bottleneck_dir; later runs reuse
   them, so only new or changed images cost a forward pass.
3. A new softmax layer (optionally with a ReLU hidden layer before it) is
   trained on the cached bottlenecks. Every --eval_step_interval steps the log
   shows the training accuracy, the cross entropy (it should fall) and the
   accuracy on validation images the layer never trains on. If training
   accuracy is high but validation accuracy is low, the layer is memorising
   the training images. By default the layer kept is the one from the
   evaluation that scored best on the whole validation set (--keep_best), and
   --early_stopping_patience can stop training once that score stops rising.
4. The kept layer is measured on the testing set (and the validation set):
   accuracy, per-class precision, recall and F1, and the confusion matrix, as
   tables in the log, as JSON (--eval_report) and as pictures in TensorBoard.
   --assert_accuracy_at_least stops here, with an error, when the classifier
   is not good enough. Otherwise the module plus the new layer are exported as
   a frozen graph (--output_graph) with its labels file (--output_labels),
   ready for label_image.py, and if asked as a SavedModel (--saved_model_dir)
   and a TFLite model with its labels inside (--tflite_output_file,
   quantized with --tflite_quantization).
5. Each exported file is loaded again and run on the test set, and one table
   gives its size, accuracy, agreement with training and time per image;
   --assert_accuracy_at_least applies to each of them.

Watch training with `tensorboard --logdir /tmp/retrain_logs`.
"""

from retrain_suite.cli import commands

if __name__ == "__main__":
    commands.retrain()
