r"""What every command does before its main: a quiet TensorFlow start-up, and --help that succeeds.

Importing TensorFlow 2.21 and looking for devices writes C++ log lines to
stderr: `WARNING: All log messages before absl::InitializeLog() is called are
written to STDERR`, notes on oneDNN, CUDA drivers and CPU instructions, and on a
machine without a GPU an `E... failed call to cuInit` line. A newcomer reads
them as errors. `quiet_tensorflow` is called at the top of each command's file
(retrain.py, label_image.py, pre_input.py, `python -m bottleneck`,
bench/run.py), before anything imports TensorFlow, and

- sets TF_CPP_MIN_LOG_LEVEL=2 (C++ errors only) for the rest of the run; and
- imports TensorFlow and lists the devices with stderr (file descriptor 2)
  passed through a filter that drops the start-up lines above and lets every
  other line through as it comes. Some of those are written while the shared
  libraries load, before TensorFlow reads TF_CPP_MIN_LOG_LEVEL, so the
  variable alone does not hide them.

It does neither when the user asks for TensorFlow's log: TF_CPP_MIN_LOG_LEVEL
already set in the environment (any value: `TF_CPP_MIN_LOG_LEVEL=0` shows
everything), or `--logging_verbosity=DEBUG` on the command line. The level
is read from the command line itself, before absl parses it, because the C++
side reads it once when TensorFlow loads; a --logging_verbosity inside a
--flagfile is read too late for that and leaves the start-up quiet.
"""

import contextlib
import os
import re
import sys
import threading

from absl import app, flags

# Lines of TensorFlow's start-up that say nothing the user must act on. Other
# lines written during the import (Python warnings, real C++ errors) are kept.
START_UP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} [\d:.]+ +\d+ \S+\.(cc|h):\d+\] "  # C++ INFO and WARNING lines (absl's format)
    r"|E\d{4} .*(failed call to cuInit|Unable to register cu\w+ factory)"
    r"|To enable the following instructions: .* rebuild TensorFlow)"
)


def tensorflow_log_wanted(argv, environ):
    """True when the user asked for TensorFlow's C++ log: TF_CPP_MIN_LOG_LEVEL set, or DEBUG."""
    if "TF_CPP_MIN_LOG_LEVEL" in environ:
        return True
    args = list(argv[1:])
    if "--" in args:
        args = args[: args.index("--")]
    for i, arg in enumerate(args):
        name, has_value, value = arg.lstrip("-").partition("=")
        if name == "logging_verbosity" and arg.startswith("-"):
            if not has_value:
                value = args[i + 1] if i + 1 < len(args) else ""
            if value.upper() == "DEBUG":
                return True
    return False


def without_start_up_noise(text):
    """`text` (stderr of TensorFlow's start-up) less the lines START_UP_NOISE matches."""
    return "".join(line for line in text.splitlines(True) if not START_UP_NOISE.search(line))


@contextlib.contextmanager
def _stderr_filtered():
    """Pass file descriptor 2 through a filter that drops START_UP_NOISE, line by line.

    A thread copies each line to the real stderr as it comes, so what a crash
    inside the import writes is shown, not held back until the end.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # No file descriptor 2 (a detached process): nothing to hide.
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not START_UP_NOISE.search(line.decode("utf-8", "replace")):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, name="start-up log filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread reads to the end
        thread.join(timeout=10)
        if not thread.is_alive():  # else a child still holds the pipe: keep the thread's fd valid
            os.close(saved)


@contextlib.contextmanager
def _pyplot_held_back():
    """Keep `import matplotlib.pyplot` from running inside the block (it raises ImportError).

    Keras 3, which `import tensorflow` loads, imports matplotlib.pyplot when it is
    installed (for a plotting helper the suite never calls): 0.4 of the 2.6 s
    TensorFlow's import took on 2 cores. The report's pictures use matplotlib's
    Figure API without pyplot. Afterwards pyplot imports as usual.
    """
    if "matplotlib.pyplot" in sys.modules:
        yield
        return
    sys.modules["matplotlib.pyplot"] = None  # `import` of a None entry raises ImportError
    try:
        yield
    finally:
        if "matplotlib.pyplot" in sys.modules and sys.modules["matplotlib.pyplot"] is None:
            del sys.modules["matplotlib.pyplot"]


def quiet_tensorflow(argv=None, environ=None):
    """Import TensorFlow without its C++ start-up lines, unless the user asked for them.

    Does nothing once TensorFlow is imported (a library use, or a second
    command file), or when `tensorflow_log_wanted(argv, environ)`. Changes
    `environ` (os.environ by default): TF_CPP_MIN_LOG_LEVEL=2.
    """
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if "tensorflow" in sys.modules:
        return
    if tensorflow_log_wanted(argv, environ):
        with _pyplot_held_back():
            import tensorflow  # noqa: F401
        return
    environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with _stderr_filtered(), _pyplot_held_back():
        import tensorflow as tf

        # Looking for a GPU loads CUDA's driver library and writes the cuInit line where there is none.
        tf.config.list_physical_devices()


# absl's help flags, each -> whether it shows the short help (the main module's flags only).
HELP_FLAGS = {"help": True, "helpshort": True, "?": True, "helpfull": False}


def help_asked(argv):
    """True (short help) or False (--helpfull) when argv asks for help, else None."""
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg.startswith("-") and arg.lstrip("-") in HELP_FLAGS:
            return HELP_FLAGS[arg.lstrip("-")]
    return None


def run(main, interrupted=None, argv=None):
    """app.run(main), except that --help (and -?, --helpshort, --helpfull) exits 0, not 1,
    and, given interrupted, Ctrl-C prints interrupted() (one line: what was kept,
    how to continue) and exits 130 instead of a KeyboardInterrupt traceback.

    absl's help flags print the usage and exit with status 1, which scripts and
    CI read as a failure; asking for help is not one. The same usage text is
    printed here, before absl parses the flags.
    """
    argv = sys.argv if argv is None else argv
    main_module = sys.modules["__main__"]
    if not main_module.__doc__:
        # An installed command's __main__ is pip's wrapper script, without the
        # command's docstring, which absl prints as the usage.
        main_module.__doc__ = sys.modules[main.__module__].__doc__
    short = help_asked(argv)
    if short is not None:
        app.usage(shorthelp=short, writeto_stdout=True)
        if short:
            print("\nTry --helpfull to get a list of all flags.")
        sys.exit(0)
    try:
        app.run(main, argv=argv, flags_parser=parse_flags)
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted(), file=sys.stderr)
        sys.exit(130)


def parse_flags(argv):
    """absl's flag parsing, with its errors as the suite's one `error:` line.

    absl prints `FATAL Flags parsing error: ...` and a second line of advice;
    the suite's commands end every error a user can cause in one line. Every
    --flagfile is checked first (check_flagfiles), and a working folder that
    was deleted is refused, since no relative path can be found from it.
    """
    try:
        os.getcwd()
    except OSError as e:
        sys.exit(f"error: the working folder cannot be found ({e.strerror}): it was deleted "
                 "or moved, so relative paths mean nothing; cd to an existing folder and run "
                 "again.")
    try:
        check_flagfiles(argv[1:])
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        sys.exit(f"error: {message.rstrip('.')}. See --help.")


# A file of flags is a few lines; a larger one is a wrong path (a photo, a log).
MAX_FLAGFILE_BYTES = 1 << 20


def check_flagfiles(args, seen=()):
    """Raise flags.Error unless every --flagfile in args (and in those files) is a
    readable regular file of UTF-8 text of at most MAX_FLAGFILE_BYTES.

    absl opens a flag file with a plain blocking open(): a FIFO there would
    hang the command. Each is read here first by image_files.read_regular_file,
    which opens without blocking and checks the open descriptor.
    """
    for i, arg in enumerate(args):
        if arg == "--":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if name != "flagfile" or not arg.startswith("-"):
            continue
        if not has_value:
            value = args[i + 1] if i + 1 < len(args) else ""
        path = os.path.expanduser(value.strip())
        if not path or path in seen:  # absl ignores an empty one and a loop
            continue
        text = _flagfile_text(path)
        nested = [line.strip() for line in text.splitlines() if line.strip().startswith("-")]
        check_flagfiles(nested, (*seen, path))


def _flagfile_text(path):
    # Imported here, not at the top: this module runs before TensorFlow is imported.
    from retrain_suite.images import files as image_files

    data, problem = image_files.read_regular_file(path, MAX_FLAGFILE_BYTES)
    if problem:
        raise flags.Error(f"--flagfile={path} {image_files.as_clause(problem)}; give a text "
                          "file of flags, one a line")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise flags.Error(f"--flagfile={path} is not UTF-8 text; give a text file of flags, "
                          "one a line") from None

