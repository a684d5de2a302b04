"""Bundled models: small models the project trains and ships, loadable offline as ``zoo:NAME``."""
