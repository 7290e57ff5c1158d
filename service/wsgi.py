"""WSGI entry point for any WSGI server: ``gunicorn 'service.wsgi:app'``.

Settings come from the environment (``CVPIPE_MODELS_DIR``, ``CVPIPE_API_TOKEN``, ...; see
:mod:`service.config`). ``cvpipe serve`` is the supported way to run it: it also sets up
Prometheus multiprocess metrics and warms the models up in each worker after the fork. With
gunicorn's own ``--preload`` and a CNN model, set ``CVPIPE_WARMUP=0`` so that PyTorch's thread
pool is not started before the fork.
"""

from service.app import create_app

app = create_app()
