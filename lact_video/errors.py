"""The error of a setting that cannot work, shared by every layer and command (docs/design.md Sec. 5.1).

It lives here, below `data/` and `training/`, so that the data code (the latent cache) and the converter
raise it without importing the trainer's config.
"""

from __future__ import annotations

import contextlib
import os
import sys


class ConfigError(ValueError):
    """A setting that cannot work, in the user's terms: the key (dotted path or flag), what is wrong, the fix.

    Raised before any model loads where the check needs none. Command-line tools print it as one line and
    exit with status 2, as argparse does for a bad argument (`exit_on_config_error`).
    """


@contextlib.contextmanager
def exit_on_config_error():
    """The command-line boundary: a `ConfigError` prints as `PROG: error: MESSAGE` on stderr and exits with
    status 2, without a traceback (as argparse does for a bad argument)."""
    try:
        yield
    except ConfigError as error:
        sys.stderr.write(f"{os.path.basename(sys.argv[0])}: error: {error}\n")  # argparse's prog
        sys.exit(2)
