"""The JDL tags we know, with their canonical spelling.

Keys are case-insensitive; a known tag is shown in the spelling below whatever the
user wrote, an unknown key keeps the spelling of its (last) definition.
"""

from __future__ import annotations

KNOWN_TAGS = (
    "Arguments",
    "CPUCores",
    "Email",
    "Executable",
    "FilesToCheck",
    "GUIDFile",
    "InputData",
    "InputDataCollection",
    "InputDataList",
    "InputDataListFormat",
    "InputFile",
    "JDLArguments",
    "JDLPath",
    "JDLProcessor",
    "JDLVariables",
    "JobTag",
    "LPMActivity",
    "LPMChainID",
    "MasterJobID",
    "MaxFailFraction",
    "MaxResubmitFraction",
    "MaxWaitingTime",
    "MemorySize",
    "OrigRequirements",
    "Output",
    "OutputArchive",
    "OutputDir",
    "OutputErrorE",
    "OutputFile",
    "Packages",
    "Price",
    "Requirements",
    "Split",
    "SplitArguments",
    "SplitMaxInputFileNumber",
    "SplitMaxInputFileSize",
    "TTL",
    "Type",
    "User",
    "ValidationCommand",
    "WorkDirectorySize",
)

_CANONICAL = {tag.casefold(): tag for tag in KNOWN_TAGS}


def canonical_name(name: str) -> str:
    """The canonical spelling of a known tag, else ``name`` unchanged."""
    return _CANONICAL.get(name.casefold(), name)
