"""Asking before an irreversible change, the same way in both programs.

On a terminal the question is asked and only "y" or "yes" goes on; anywhere
else (a pipe, cron, a charm) nobody can answer, so the command refuses unless
-y/--yes was given: a script never removes something by accident.
"""

__all__ = ["Refused", "confirm", "is_tty", "NEED_YES", "CANCELLED"]

NEED_YES = ("refusing to {verb} without confirmation: standard input is not a "
            "terminal; pass -y/--yes to confirm")
CANCELLED = "{verb} cancelled: nothing changed"


class Refused(Exception):
    """Not confirmed. status: 2 when -y/--yes was needed, 1 when the answer was no."""

    def __init__(self, message, status):
        super().__init__(message)
        self.status = status


def is_tty(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


def confirm(question, *, yes, stdin, out, verb):
    """Return when confirmed; else raise Refused. verb: 'remove', 'revoke', …"""
    if yes:
        return
    if not is_tty(stdin):
        raise Refused(NEED_YES.format(verb=verb), 2)
    out.write(question)
    out.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise Refused(CANCELLED.format(verb=verb), 1)
