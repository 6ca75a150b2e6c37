"""`python -m curate.llm.llama_server ARGS`: llama-cpp-python's OpenAI-compatible server
(`python -m llama_cpp.server ARGS`, same arguments), with every model it loads built the way
curate's own loader builds them: without llama.cpp's extra buffer types on x86, whose AMX variant
crashes on Sapphire Rapids and later CPUs (see `curate.llm.embedded.safe_model_params`).

Serve the embedded model, for example:

    python -m curate.llm.llama_server --model "$(python -c 'from curate.llm.embedded import \
embedded_model_path; print(embedded_model_path())')" --host 127.0.0.1 --port 8000

Before it serves, it prints one line saying how the model was loaded ("use_extra_bufts=False").
"""

from __future__ import annotations

import argparse
import os
import sys

from curate.errors import require
from curate.llm.embedded import check_model_params, safe_model_params


def main(argv: list[str] | None = None) -> None:
    require("llama_cpp.server", extra="embedded", package="llama-cpp-python[server]")
    import uvicorn
    from llama_cpp.server import app as server_app
    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser(prog="python -m curate.llm.llama_server", description=__doc__.split("\n")[0])
    add_args_from_model(parser, Settings)
    args = parser.parse_args(argv)
    server_settings = parse_model_from_args(ServerSettings, args)
    model_settings = [parse_model_from_args(ModelSettings, args)]
    # Held for the life of the server: a model loaded later (another alias) loads safely too.
    with safe_model_params():
        app = server_app.create_app(server_settings=server_settings, model_settings=model_settings)
        llm = server_app._llama_proxy._current_model  # the library keeps its loaded model there
        check_model_params(llm)
        print(
            f"curate.llm.llama_server: loaded {llm.model_path} with use_extra_bufts={llm.model_params.use_extra_bufts}",
            flush=True,
        )
        uvicorn.run(
            app,
            host=os.getenv("HOST", server_settings.host),
            port=int(os.getenv("PORT", server_settings.port)),
            ssl_keyfile=server_settings.ssl_keyfile,
            ssl_certfile=server_settings.ssl_certfile,
        )


if __name__ == "__main__":
    sys.exit(main())
