"""The toy world: subjects and scenes where every attribute is known, its renderer, attribute readers, base and
scorer training on it, exact evaluation, and tiny stand-ins of the real backbones' classes."""
