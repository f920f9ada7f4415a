"""The runtime's logging: wire.logs' schema, with library chatter kept out of a terminal.

`LOG_FORMAT=text` (the default, what `make run` shows) prints one short line per event and
keeps library chatter a user cannot act on (deprecations, optional-backend fallbacks, access
logs that repeat our own per-request line) out of the terminal. `LOG_FORMAT=json` (the
container images' default) keeps every logger, warnings included, as JSON lines.
"""

from __future__ import annotations

import logging

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from wire.logs import configure_root

# In text mode: loggers whose INFO lines repeat our per-request line (access logs) or say
# nothing a user acts on (KServe's registration chatter), and libraries whose warnings are
# about their own internals (deprecations, optional-backend fallbacks).
QUIET_IN_TEXT = {
    "uvicorn.access": logging.WARNING,
    "kserve": logging.WARNING,
    "py.warnings": logging.ERROR,
    "transformers": logging.ERROR,
    "diffusers": logging.ERROR,
    "huggingface_hub": logging.ERROR,
}


def configure(level: str = "INFO", log_format: str = "json") -> None:
    """One handler on the root logger for ours, KServe's and uvicorn's loggers (which leave
    their own formats alone when the root logger already has a handler), and for diffusers'
    and transformers', which print through their own handler unless told to propagate.

    Call it before importing diffusers' pipelines: importing them already logs."""
    configure_root(level, log_format)
    logging.captureWarnings(True)
    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
    if log_format == "text" and logging.getLevelName(level) > logging.DEBUG:
        for name, quiet_level in QUIET_IN_TEXT.items():
            logging.getLogger(name).setLevel(quiet_level)
