"""Images, from the file to the batch the module sees. One room per role:

- `files`: reading a file without blocking, and an image's bytes before any
  decoding: content hash, EXIF orientation, size from the header, the
  pixel limit, the part handed to the decoder, why an image is unusable.
- `preprocess`: the one preprocessing function (`decode_and_resize`) and
  PREPROCESSING_VERSION, which keys the bottleneck cache.
- `distortions`: random changes to training images (data augmentation).
- `pipelines`: the image sources (files, TFRecords) and the tf.data pipelines
  of images: batches for bottlenecks and classification, distorted and
  fine-tuning batches for training.

Import a room under an `image_` alias, e.g.
`from retrain_suite.images import files as image_files`.
"""
