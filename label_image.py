r"""Classify images with a graph exported by retrain.py.

    python label_image.py photo.jpg output_graph.pb output_labels.txt
    python label_image.py --image photos/ --graph output_graph.pb --labels output_labels.txt

prints the --top_k labels with their scores, best first. Several images (or a
folder of them) are classified in batches, each block headed by the image
path; --output_format=json prints one JSON document for scripts.

Images are decoded and resized by the same function retrain.py used for the
bottlenecks, so an image gets the same probabilities here as in training.
"""

from retrain_suite.cli import commands

if __name__ == "__main__":
    commands.label_image()
