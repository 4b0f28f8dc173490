"""Run a command, its output to a log file, then print its peak RSS in KiB; exit with its code.

``python -P peak_rss.py LOG COMMAND [ARG ...]``. A separate small process, so that the peak it
reads (``RUSAGE_CHILDREN``: the largest of its waited-for children) is the command's own: a
child forked straight from the benchmark would inherit the benchmark's RSS high-water mark in
its ``ru_maxrss``. Standard library only: it is run by path, not imported.
"""

import resource
import subprocess
import sys


def main(argv: list[str]) -> int:
    log_path, command = argv[0], argv[1:]
    with open(log_path, "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
