"""supervdsmd: placeholder entry point until the privileged helper lands (issue 5)."""

import sys


def main(argv: list[str] | None = None) -> int:
    print("supervdsmd: not implemented yet", file=sys.stderr)
    return 1
