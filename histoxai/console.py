"""What a command-line run needs around TensorFlow: its start-up messages kept off the terminal.

TensorFlow's native libraries print a few lines when they load (absl's "before InitializeLog" warning,
oneDNN and CPU-instruction notices) straight to file descriptor 2, where neither Python's warnings
filter nor TF_CPP_MIN_LOG_LEVEL reach all of them. `import_tensorflow()` loads TensorFlow once with
descriptor 2 captured and passes on every line that is not one of those notices.

It then freezes the garbage collector's heap (gc.freeze): the some 400,000 objects that TensorFlow and
Keras bring live as long as the process, and the collection at interpreter exit no longer walks them.
A small `histoxai train` spent 0.97 s between its last exit handler and its end, 0.12 s so (2-core EPYC).
The task server (pipelines/task_fork.py) imports through here before it forks, as Python's gc.freeze
documentation advises, so that its children's collections leave the shared pages alone.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import tempfile

START_UP_NOISE = re.compile(
    r"absl::InitializeLog\(\)|\] oneDNN custom operations are on|cpu_feature_guard\.cc"
    r"|rebuild TensorFlow with the appropriate compiler flags|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered|TF-TRT Warning|cuda_executor\.cc.*NUMA node")


def import_tensorflow():
    """TensorFlow, imported now if it is not yet, without its start-up notices on stderr."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # INFO off; warnings and errors still shown
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401 (keras loads TensorFlow and its own backend in one go)
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if line.strip() and not START_UP_NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
    gc.freeze()  # module docstring
    return tensorflow
