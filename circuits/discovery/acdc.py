"""ACDC (Conmy et al. 2023). Filled in by its own change; registers nothing until then."""


def register_methods(register) -> None:
    return None
