"""`python -m loomstack_cli` runs the `loomstack` command."""

from loomstack_cli.app import main

main()
