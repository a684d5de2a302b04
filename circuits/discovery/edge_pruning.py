"""Edge pruning (Bhaskar et al. 2024). Filled in by its own change; registers nothing until then."""


def register_methods(register) -> None:
    return None
