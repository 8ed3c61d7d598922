"""``python -m torchtrace`` is the ``torchtrace`` command."""
from .cli import main

main()
