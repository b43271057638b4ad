"""``iterseg`` command line: one sub-command per workflow step or tool, each a thin layer over the package.

Modules
-------
app     ``main``: the parser, logging to ``--log``, exit codes and the one-line error
steps   the commands the Snakemake rules run (convert ... promote)
tools   the commands for people (demo-data, export-seg, submit, status, rollback, reconvert)
common  how a command is registered and how a handler reads its records

Heavy imports (torch, nnU-Net, highdicom) happen inside the commands so ``--help`` is instant.
"""

from iterseg.cli.app import main

__all__ = ["main"]
