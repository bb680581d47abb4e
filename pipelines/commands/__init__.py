"""``recloop`` subcommands, one module each.

Every module here defines ``configure(parser)`` (adds its arguments) and
``run(args, settings) -> int`` (the exit code). The module docstring's first line is the
command's one-line help, the rest its description. Modules import nothing heavy at import time:
``recloop --help`` stays fast.
"""
