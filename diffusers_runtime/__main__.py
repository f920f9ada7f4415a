"""`python -m diffusers_runtime`: KServe's flags plus ours -> settings -> ModelServer."""

from __future__ import annotations

import argparse
import logging
import os

from . import logs
from .settings import load_settings


def main() -> None:
    settings = load_settings()
    logs.configure(os.environ.get("LOG_LEVEL", "INFO").upper(), settings.log_format)
    # Imported once logging is configured: importing diffusers' pipelines already logs.
    import diffusers
    import transformers
    from kserve import ModelServer, model_server

    from .errors import install_handlers
    from .model import DiffusersModel
    from .routes import register_routes

    parser = argparse.ArgumentParser(
        parents=[model_server.parser],
        description="Serve a diffusers pipeline with KServe. Configuration: environment "
        "variables (see README); KServe's own flags work as usual.",
    )
    # --model_name beats MODEL_NAME, which beats KServe's default.
    parser.set_defaults(model_name=settings.model_name)
    args, _ = parser.parse_known_args()
    # Progress bars are for terminals; in a pod they are noise between the JSON lines.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger(__name__).info("starting with settings %s", settings.model_dump())

    model = DiffusersModel(args.model_name, settings)
    model.load()
    install_handlers(model_server.app)
    register_routes(model_server.app, model)
    ModelServer().start([model])


if __name__ == "__main__":
    main()
