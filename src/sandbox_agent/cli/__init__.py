"""The ``sandbox-agent`` command line: parse options, call the library, print results.

Errors a user can cause are printed as one line naming the place and the fix, with
the exit codes of ``sandbox_agent.exitcodes``; they never end in a traceback.
One module per command group: jdl, certs, policy, sandbox, catalogue, queue (submit,
jobs, status), pilot (run), selftest, doctor, audit, image, results (outputs, logs, kill) and
broker (serve); remote holds the options that point a command at a broker.
"""

from sandbox_agent.cli.app import app, main
from sandbox_agent.cli.audit import audit_app
from sandbox_agent.cli.broker import broker_app
from sandbox_agent.cli.catalogue import catalogue_app
from sandbox_agent.cli.certs import certs_app
from sandbox_agent.cli.doctor import doctor
from sandbox_agent.cli.image import image_app
from sandbox_agent.cli.jdl import jdl_app
from sandbox_agent.cli.pilot import run
from sandbox_agent.cli.policy import policy_app
from sandbox_agent.cli.queue import jobs, status, submit  # top-level commands
from sandbox_agent.cli.results import kill, logs, outputs
from sandbox_agent.cli.sandbox import sandbox_app
from sandbox_agent.cli.selftest import selftest

app.add_typer(jdl_app, name="jdl")
app.add_typer(certs_app, name="certs")
app.add_typer(policy_app, name="policy")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(catalogue_app, name="catalogue")
app.add_typer(broker_app, name="broker")
app.add_typer(audit_app, name="audit")
app.add_typer(image_app, name="image")

__all__ = ["app", "doctor", "jobs", "kill", "logs", "main", "outputs", "run", "selftest", "status",
           "submit"]  # fmt: skip
