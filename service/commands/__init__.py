"""Sub-commands of the ``tessera`` CLI, one module each (see :mod:`service.cli`)."""
