"""The ``sandbox-agent`` command line: parse options, call the library, print results.

Errors a user can cause are printed as one line naming the place and the fix, with
the exit codes of ``sandbox_agent.exitcodes``; they never end in a traceback.
One module per command group: jdl, certs.
"""

from sandbox_agent.cli.app import app, main
from sandbox_agent.cli.certs import certs_app
from sandbox_agent.cli.jdl import jdl_app

app.add_typer(jdl_app, name="jdl")
app.add_typer(certs_app, name="certs")

__all__ = ["app", "main"]
