"""Intervening on edges: the decomposed forward (:mod:`~circuits.interventions.forward`), the residual strategies
it runs with (plain, gradient probe, masked, incremental), attention, and the ablations cut edges carry."""
