"""The package's known errors: each carries the one line the user sees, and the CLI maps it to an exit code.

They live apart from the modules that raise them, so that the CLI catches them without importing
those modules (each stage's dvc.yaml deps are its import closure).
"""


class ParamsError(ValueError):
    """A bad ``params.yaml``: the message is the one line the user sees."""


class DataError(RuntimeError):
    """Raw data missing, unreachable or corrupt: the message names the file and the fix."""


class StoreError(RuntimeError):
    """The MLflow store cannot be used: the message is the one line the user sees."""


class ClusterError(RuntimeError):
    """The Ray cluster cannot train the study: the message is the one line the user sees."""
