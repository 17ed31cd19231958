"""`python -m harvester` runs the same CLI as the `harvester` command."""

from harvester.cli import main

main()
