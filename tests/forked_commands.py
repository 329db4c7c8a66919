"""The suite's commands run in processes of their own forked from one that has imported
TensorFlow already: helpers.run_command's machinery.

A fresh Python spends about 2.7 s of a core importing TensorFlow before a command
does anything, which made up much of the suite's time. A test worker starts one
server (a fresh Python that starts as every command does, with
startup.quiet_tensorflow, and imports the commands' modules) and asks it for each
command: the server forks, and the child runs the script as `python SCRIPT ARGS`
or `python -m MODULE ARGS` would (sys.argv, sys.path[0], __main__), with stdout
and stderr in files of its own and stdin empty, and exits with the status Python
would (a string given to sys.exit printed, an uncaught exception's traceback
printed and 1). The child's exit status, stdout and stderr come back as a
subprocess.CompletedProcess.

What a forked child cannot show is the interpreter's own start: its import of
TensorFlow and the start-up lines the quiet start drops. Tests of those
(test_command_startup.py, test_console.py, `trained`'s noise check) start fresh
Pythons (helpers.run_script), and so does run_command itself when the worker's
environment is not the one the server started with, when the command line asks
for TensorFlow's log (startup.tensorflow_log_wanted), where the server found a
GPU (a driver initialized before fork is not usable after it), or with
RETRAIN_TESTS_FRESH_PYTHON=1 in the environment (every command a fresh Python).
"""

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The server: one request (JSON, one line on stdin) at a time; it answers the
# child's pid at once on stdout (a line starting with MARK: whatever an import prints
# is passed over), then writes the child's exit status into request["status"].
MARK = "forked-commands:"
SERVER = r"""
import json, os, runpy, sys, traceback
MARK = "forked-commands:"
from retrain_suite.cli import startup
startup.quiet_tensorflow()
import tensorflow as tf
from retrain_suite.cli import bottleneck, label_image, pre_input, retrain  # noqa: F401
gpus = bool(tf.config.list_physical_devices("GPU"))
sys.stdout.flush()
os.write(1, (MARK + json.dumps({"gpus": gpus}) + "\n").encode())


def exit_status(code):
    # What Python does with SystemExit(code) at the top level.
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def child(request):
    status = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        sys.stdin = open(os.devnull)
        args = request["argv"]
        try:
            if args[0] == "-m":
                sys.argv = [args[1], *args[2:]]
                sys.path[0] = os.getcwd()
                runpy.run_module(args[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(args)
                sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
                runpy.run_path(args[0], run_name="__main__")
            status = 0
        except SystemExit as e:
            status = exit_status(e.code)
        except BaseException:
            traceback.print_exc()
            status = 1
        import atexit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)


def read_line():
    line = b""
    while not line.endswith(b"\n"):
        part = os.read(0, 1)
        if not part:
            return None
        line += part
    return line


while True:
    line = read_line()
    if line is None:
        break
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(request)
    os.write(1, (MARK + json.dumps({"pid": pid}) + "\n").encode())
    _, status = os.waitpid(pid, 0)
    with open(request["status"] + ".tmp", "w") as f:
        f.write(str(os.waitstatus_to_exitcode(status)))
    os.rename(request["status"] + ".tmp", request["status"])
"""


class _Server:
    """The worker's server process, started on first use."""

    def __init__(self):
        self.environ = dict(os.environ)
        self.log = tempfile.TemporaryFile()  # the server's own stderr, shown if it ends
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.log, env=self.environ, bufsize=0,
        )
        self.gpus = self._answer()["gpus"]

    def _answer(self):
        """The server's next answer (a MARK line, as JSON)."""
        line = b""
        while not line.startswith(MARK.encode()) or not line.endswith(b"\n"):
            if line.endswith(b"\n"):
                line = b""  # printed by something the server imported
            part = self.process.stdout.read(1)
            if not part:
                self._ended()
            line += part
        return json.loads(line[len(MARK):])

    def _ended(self):
        self.log.seek(0)
        raise RuntimeError("the command server ended:\n"
                           + self.log.read()[-3000:].decode(errors="replace"))

    def alive(self):
        return self.process.poll() is None

    def run(self, args, timeout):
        """-> (exit status, stdout, stderr) of one command run by a forked child."""
        with tempfile.TemporaryDirectory(prefix="command-") as folder:
            request = {name: os.path.join(folder, name) for name in ("stdout", "stderr", "status")}
            request["argv"] = list(args)
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            pid = self._answer()["pid"]
            deadline = time.monotonic() + timeout
            while not os.path.exists(request["status"]):
                if not self.alive():
                    self._ended()
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    while not os.path.exists(request["status"]) and self.alive():
                        time.sleep(0.01)
                    raise subprocess.TimeoutExpired([sys.executable, *args], timeout)
                time.sleep(0.005)
            with open(request["status"]) as f:
                status = int(f.read())
            outputs = []
            for name in ("stdout", "stderr"):
                with open(request[name], encoding="utf-8", errors="replace") as f:
                    outputs.append(f.read())
        return status, outputs[0], outputs[1]

    def close(self):
        if self.alive():
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


_server = None


def _the_server():
    global _server
    if _server is None or not _server.alive():
        _server = _Server()
        atexit.register(_server.close)
    return _server


def forkable(args):
    """Whether the command line args (without python) may run forked: one of the
    suite's scripts, at the quiet start (no TensorFlow log asked for), and not turned
    off by RETRAIN_TESTS_FRESH_PYTHON=1."""
    from retrain_suite.cli import startup

    if os.environ.get("RETRAIN_TESTS_FRESH_PYTHON") == "1":
        return False
    script = tuple(args[:2]) == ("-m", "bottleneck") or (
        args and args[0] in ("retrain.py", "label_image.py", "pre_input.py"))
    return bool(script) and not startup.tensorflow_log_wanted(["python", *args], os.environ)


def _environment(environ):
    """environ less what pytest changes from test to test (the test's name)."""
    return {k: v for k, v in environ.items() if k != "PYTEST_CURRENT_TEST"}


def run(args, timeout):
    """-> (exit status, stdout, stderr) from a forked child, or None where the command
    must run in a fresh Python (forkable, the environment, a GPU)."""
    if not forkable(args):
        return None
    server = _the_server()
    if server.gpus or _environment(os.environ) != _environment(server.environ):
        return None
    return server.run(args, timeout)
