"""Entry point of the zipapp: one file, two programs, chosen busybox-style.

    aar.pyz serve ...             the registry (aar), the default
    ams-sync run ...              the agent, through a link named ams-sync or ams_sync
    aar.pyz ams-sync run ...      the agent, where a link is awkward (the snaps do this)

The name is the basename of sys.argv[0] without a `.pyz` or `.py` suffix.
"""
import os
import sys

__all__ = ["AGENT_NAMES", "main", "select"]

AGENT_NAMES = ("ams-sync", "ams_sync")


def _program_name(path):
    name = os.path.basename(path)
    for suffix in (".pyz", ".py"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def select(argv):
    """Return ("aar" or "ams_sync", the program's arguments) for a full argv."""
    args = list(argv[1:])
    if _program_name(argv[0] if argv else "") in AGENT_NAMES:
        return "ams_sync", args
    if args and args[0] in AGENT_NAMES:
        return "ams_sync", args[1:]
    return "aar", args


def main():
    program, args = select(sys.argv)
    # Import only the program that runs: the agent never loads the server.
    if program == "ams_sync":
        import ams_sync as module
    else:
        import aar as module
    sys.exit(module.main(args))


if __name__ == "__main__":
    main()
