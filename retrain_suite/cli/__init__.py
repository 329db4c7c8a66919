"""The command lines: each module defines its flags, turns them into plain values or
a configuration, calls the library, and reports the errors a user can cause as
one `error:` line. The top-level scripts (retrain.py, label_image.py,
pre_input.py, python -m bottleneck) and the installed commands run these."""
