"""``python -m genepanel``: the same as the ``genepanel`` command."""

from genepanel.cli import main

main()
