"""Reading ALICE job descriptions (JDL) exactly, and evaluating their Requirements.

``load_job`` turns JDL text into a typed ``JobSpec``; ``evaluate`` decides a
Requirements expression against a ``Slot``.  Every problem with the input is a
``JDLError`` that names the line, the column and what was expected.
"""

from sandbox_agent.jdl.errors import JDLError
from sandbox_agent.jdl.parser import ParsedJDL, parse_expression, parse_jdl
from sandbox_agent.jdl.requirements import Decision, Slot, evaluate
from sandbox_agent.jdl.spec import (
    InputData,
    InputFile,
    JobSpec,
    OutputSpec,
    job_spec,
    load_job,
    render_jdl,
)

__all__ = [
    "Decision",
    "InputData",
    "InputFile",
    "JDLError",
    "JobSpec",
    "OutputSpec",
    "ParsedJDL",
    "Slot",
    "evaluate",
    "job_spec",
    "load_job",
    "parse_expression",
    "parse_jdl",
    "render_jdl",
]
