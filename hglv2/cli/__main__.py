"""``python -m hglv2.cli`` runs the command line."""

from hglv2.cli import main

main()
