"""One module per `metasup-mcp` command, each a small typed function returning the exit code.

`metasup_mcp.cli` only parses arguments and dispatches here, inside one error handler.
"""

EXIT_OK = 0
EXIT_REFUSED = 1  # the supervisor cannot start as things are (state folder in use, workspace unrecoverable)
EXIT_CONFIG = 2  # the configuration (or the command's input) is wrong: the message names what to fix
