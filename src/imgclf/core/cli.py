"""The command line's plumbing, below everything it calls: an argument parser whose errors are one usage line and
one error line, and the one-line description of an operating-system error."""

import argparse
import os
import sys
from typing import NoReturn

from imgclf.core.errors import one_line, os_reason


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one usage line and one error line, not the whole option list."""

    def format_usage(self) -> str:
        """One usage line: the command, its positional arguments, and where the options are listed."""
        words = [self.prog, "[options]"]
        for action in self._get_positional_actions():
            name = action.metavar or action.dest.upper()
            words.append(f"{name} ..." if action.nargs in ("+", "*", argparse.PARSER) else name)
        return f"usage: {' '.join(words)} ({self.prog} --help lists them)\n"

    def error(self, message: str) -> NoReturn:
        """Print the one-line usage and a one-line error, then exit with status 2."""
        self.print_usage(sys.stderr)
        self.exit(2, f"imgclf: error: {one_line(message)}\n")

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        """Parse ``args``; an unknown flag of a command is reported with that command's usage line."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.command_parser(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def command_parser(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The subcommand's parser that ``parsed`` went through (this parser when there is none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(parsed, action.dest, None))
                if isinstance(chosen, OneLineErrorParser):
                    return chosen.command_parser(parsed)
        return self


def describe_os_error(exc: OSError) -> str:
    """One line naming the path(s) an OS error concerns and the system's reason."""
    names = (exc.filename, exc.filename2)
    paths = [os.fsdecode(p) if isinstance(p, str | bytes) else str(p) for p in names if p is not None]
    return one_line(f"{' → '.join(paths)}: {os_reason(exc)}" if paths else os_reason(exc))
