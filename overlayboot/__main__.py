"""``python -m overlayboot``: the same as the ``overlayboot`` command."""

from overlayboot.cli import main

main()
