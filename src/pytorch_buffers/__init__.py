"""Find the tensors in a module that ``.to()`` will not move or ``state_dict()`` will not save."""

__version__ = "0.1.0"
