"""``python -m genepanel.cli``: the same as the ``genepanel`` command."""

from genepanel.cli import main

main()
