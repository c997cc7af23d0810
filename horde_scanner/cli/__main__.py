"""`python -m horde_scanner.cli`: the same entry point as the `horde-scanner` command."""

from horde_scanner.cli import main

main()
