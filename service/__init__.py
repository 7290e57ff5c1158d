"""The cvpipe prediction API (Flask): ``create_app()`` builds it, ``cvpipe serve`` runs it."""

from service.app import create_app

__all__ = ["create_app"]
