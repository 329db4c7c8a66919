"""Write a random-weight feature-vector module for offline tests and benchmarks.

    python -m bottleneck.make_module --kind tiny --output_dir /tmp/tiny_module
"""

from retrain_suite.cli import commands

if __name__ == "__main__":
    commands.make_module()
