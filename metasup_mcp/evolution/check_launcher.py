"""Run a Python check so that the change it judges cannot shadow its runner. Stdlib only.

Usage (built by `checks.check_argv`): python -I [flags] check_launcher.py (-m MOD | -c CODE | SCRIPT) ARGS...

Python normally puts the working directory (`-m`, `-c`) or the script's folder first on
`sys.path`, so a `pytest.py` a change adds to the workspace would run instead of pytest. Under
`-I` nothing is put there; this launcher then puts the workspace (and a script's folder) at the
END of `sys.path`, after the standard library and site-packages: the code under test still
imports, but whatever is installed wins over a module of the same name in the workspace.
"""

import os
import runpy
import sys


def main() -> None:
    args = sys.argv[1:]
    if not args:
        sys.exit("check_launcher: nothing to run")
    workspace = os.getcwd()
    if args[0] == "-m" and len(args) > 1:
        sys.path.append(workspace)
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[0] == "-c" and len(args) > 1:
        sys.path.append(workspace)
        sys.argv = ["-c", *args[2:]]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    else:
        script = os.path.abspath(args[0])
        sys.path.extend(dict.fromkeys([os.path.dirname(script), workspace]))
        sys.argv = args
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
