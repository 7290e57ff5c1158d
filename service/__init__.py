"""The cvpipe prediction API (Flask): ``create_app()`` builds it, ``cvpipe serve`` runs it."""

import lazy_loader

# loaded on first use, so that `cvpipe --help` (which imports service.serve) loads no Flask
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submod_attrs={"app": ["create_app"]})
