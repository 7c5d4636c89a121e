"""What every child script does with an error, and how it serves many requests: imported by the scripts beside it,
never by the fusion package.

An error is one line (the exception's type and its last line, which is what the parent reports). Run as
``SCRIPT ARGS...`` a script does one step and exits (0, or 5 after saying why on stderr). Run as ``SCRIPT serve`` it
reads one JSON list of arguments a line on stdin and answers each on the file descriptor named by
``FUSION_REPLY_FD`` with ``{"ok": true}`` or ``{"ok": false, "error": LINE}``, so that a parent pays for starting
Python and importing the engine once; the engine's own prints go to stdout and stderr, which the parent keeps apart.
"""

import json
import os
import sys


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[-1] if text else type(error).__name__}"


def run_reporting(function, *args) -> int:
    """``function(*args)``; 0, or 5 after saying why in one line (each engine raises its own exception types)."""
    try:
        function(*args)
    except Exception as error:
        print(_reason(error), file=sys.stderr)
        return 5
    return 0


def main_or_serve(dispatch) -> int:
    """``dispatch(argv)`` does one step (raising on failure): once for this process's arguments, or for every request
    when the first argument is ``serve``."""
    if sys.argv[1:2] != ["serve"]:
        return run_reporting(dispatch, sys.argv[1:])
    replies = os.fdopen(int(os.environ["FUSION_REPLY_FD"]), "w", encoding="utf-8")
    for line in sys.stdin:
        try:
            dispatch(json.loads(line))
            answer = {"ok": True}
        except Exception as error:
            answer = {"ok": False, "error": _reason(error)}
        sys.stdout.flush()
        sys.stderr.flush()
        replies.write(json.dumps(answer) + "\n")
        replies.flush()
    return 0
