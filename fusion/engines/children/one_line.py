"""What every child script does with an error: one line on stderr (the exception's type and its last line, which is
what the parent reports) and exit code 5. Imported by the scripts beside it, never by the fusion package."""

import sys


def run_reporting(function, *args) -> int:
    """``function(*args)``; 0, or 5 after saying why in one line (each engine raises its own exception types)."""
    try:
        function(*args)
    except Exception as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        print(f"{type(error).__name__}: {reason}", file=sys.stderr)
        return 5
    return 0
