"""``cvpipe serve``: the prediction API under gunicorn, a production WSGI server.

The models are loaded once, in gunicorn's master process, before the workers are forked
(``preload_app``), so every worker shares them and a broken models folder fails at once. Each
worker is a ``gthread`` worker (keep-alive connections, ``--threads`` requests at a time) and
warms its models up after the fork. Prometheus metrics of all workers are added up through a
fresh multiprocess folder (``PROMETHEUS_MULTIPROC_DIR``), removed when the server stops.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cvpipe.config import ENV_MODELS_DIR, MODELS_DIR_DEFAULT, models_dir
from cvpipe.errors import ConfigError, CvpipeError
from service.config import SETTINGS

log = logging.getLogger(__name__)

ENV_PROMETHEUS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def limit_threads(n: int) -> None:
    """Cap the BLAS/OpenMP, PyTorch and OpenCV thread pools of this process at ``n`` threads.

    With several workers on few cores, one pool per worker sized for the whole machine would
    oversubscribe the cores; a worker gets ``cores // workers`` threads.
    """
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        pass
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
    if "cv2" in sys.modules:
        import cv2

        cv2.setNumThreads(n)


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                hint = "choose another --port or stop the program using it"
            else:  # a name that does not resolve, an address of another machine
                hint = "give an address of this machine as --host (127.0.0.1, or 0.0.0.0 for all)"
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; {hint}") from None


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def build_server(app: Any, options: dict[str, Any], threads_per_worker: int, on_exit: Any = None,
                 switch_interval: float | None = None, when_ready: Any = None) -> Any:
    """A gunicorn application serving ``app`` with the gunicorn ``options`` (setting -> value).

    ``switch_interval`` (seconds) is set as each worker's ``sys.setswitchinterval``;
    ``when_ready(server)`` runs in the master once it listens (it starts the front).
    """
    from gunicorn.app.base import BaseApplication

    def post_worker_init(worker: Any) -> None:
        limit_threads(threads_per_worker)
        if switch_interval:
            sys.setswitchinterval(switch_interval)
        app.extensions["cvpipe"]["registry"].warm_up()

    def worker_exit(server: Any, worker: Any) -> None:
        # In the worker, once it has served its last request: leave at once with gunicorn's exit
        # code instead of tearing down PyTorch, scikit-learn & co. module by module, which takes
        # seconds and delays every shutdown and restart. (The master calls this hook too, for
        # workers it reaps; there it does nothing.)
        if os.getpid() != worker.pid:
            return
        exc = sys.exc_info()[1]
        code = exc.code if isinstance(exc, SystemExit) else (1 if exc is not None else 0)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)

    def child_exit(server: Any, worker: Any) -> None:
        if os.environ.get(ENV_PROMETHEUS_DIR):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid)

    def exit_hook(server: Any) -> None:
        # The master, stopping: clean up, then leave at once with the arbiter's exit status (the
        # HaltServer being handled carries it), skipping the slow module-by-module teardown.
        if on_exit is not None:
            on_exit()
        exc = sys.exc_info()[1]
        status = getattr(exc, "exit_status", 0) if exc is not None else 0
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status if isinstance(status, int) else 1)

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings:  # settings of newer gunicorns are skipped on older ones
                    self.cfg.set(key, value)
            self.cfg.set("post_worker_init", post_worker_init)
            self.cfg.set("child_exit", child_exit)
            self.cfg.set("worker_exit", worker_exit)
            self.cfg.set("on_exit", exit_hook)
            if when_ready is not None:
                self.cfg.set("when_ready", when_ready)

        def load(self) -> Any:
            return app

    return Server()


def _serve(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: must be from 1 to 65535")
    if args.workers < 1 or args.threads < 1:
        raise ConfigError("--workers and --threads must be at least 1")
    if args.timeout < 0:  # gunicorn's 0 means never
        raise ConfigError(f"--timeout {args.timeout}: must be 0 (never) or more seconds")
    if args.switch_interval < 0:  # each worker would fail at sys.setswitchinterval
        raise ConfigError(f"--switch-interval {args.switch_interval:g}: must be 0 (Python's own) "
                          "or more milliseconds")
    folder = models_dir(args.models).resolve()
    if not folder.is_dir():
        raise ConfigError(f"models folder {folder} does not exist; train a model first "
                          "(cvpipe train --pipeline ...) or pass --models")
    os.environ[ENV_MODELS_DIR] = str(folder)
    if args.reports is not None:
        if Path(args.reports).is_dir():
            os.environ["CVPIPE_REPORTS_DIR"] = str(Path(args.reports).resolve())
        else:  # no comparison run yet: serve the models anyway
            log.warning("--reports %s: no such folder (cvpipe compare writes ./reports); the page "
                        "will list no reports", args.reports)
    # the name it listens on is a name clients may give in their Host header
    env, _, default = SETTINGS["ALLOWED_HOSTS"]
    hosts = os.environ.get(env) or default
    if args.host in ("0.0.0.0", "::", ""):
        log.info("listening on every address: requests must name one of the allowed hosts "
                 "(%s); set CVPIPE_ALLOWED_HOSTS to this machine's public name(s), or * for any", hosts)
    elif args.host not in hosts.split(","):
        os.environ[env] = f"{hosts},{args.host}"
    for env, value in (("CVPIPE_MAX_IMAGES", args.max_images), ("CVPIPE_TOP_K", args.top_k)):
        if value is not None:
            os.environ[env] = str(value)
    if not args.check:
        _check_port_free(args.host, args.port)

    prom_dir = None
    if args.workers > 1 and not args.check:
        # Must be set before prometheus_client creates a metric value (see service.metrics).
        prom_dir = tempfile.mkdtemp(prefix="cvpipe-prometheus-")
        os.environ[ENV_PROMETHEUS_DIR] = prom_dir
        log.info("metrics of all workers are gathered in %s (removed on exit)", prom_dir)
        if "prometheus_client" in sys.modules:
            from prometheus_client import values

            values.ValueClass = values.get_value_class()

    # the front (service.front) reads whole requests in an event loop and hands them to
    # gunicorn on a Unix socket: a slow client costs a coroutine, not a worker thread
    front_dir = None if args.no_front or args.check else tempfile.mkdtemp(prefix="cvpipe-front-")
    front: list[subprocess.Popen] = []

    def cleanup() -> None:
        for proc in front:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        if prom_dir:
            shutil.rmtree(prom_dir, ignore_errors=True)
        if front_dir:
            shutil.rmtree(front_dir, ignore_errors=True)

    try:
        from service.app import create_app

        # Warm-up runs in each worker after the fork: a thread pool started in the master
        # (PyTorch's OpenMP) does not survive fork. Loading a CNN runs multi-threaded tensor
        # ops too, so the master stays on one thread; each worker sets its own count.
        if not args.check:
            limit_threads(1)
            import torch

            torch.set_num_threads(1)
        app = create_app({"WARMUP": bool(args.check)})
        reg = app.extensions["cvpipe"]["registry"]
        for name, reason in reg.failed.items():
            log.warning("not serving %s: %s", name, reason)
        if len(reg) == 0 and not args.allow_no_models:
            raise CvpipeError(f"no model in {folder} could be loaded"
                              + (f" ({', '.join(reg.failed)} failed, see above)" if reg.failed else "")
                              + "; train one with 'cvpipe train', or pass --allow-no-models")
        names = ", ".join(reg.models) or "none"
        url = _url(args.host, args.port)
        if args.check:
            print(f"would serve {len(reg)} model(s) from {folder}: {names}")
            return 0
        threads_per_worker = max(1, _cores() // args.workers)
        public = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
        backend = f"{front_dir}/api.sock" if front_dir else None

        def start_front(server: Any) -> None:
            settings = app.config
            proc = subprocess.Popen(
                [sys.executable, "-m", "service.front", "--host", args.host, "--port", str(args.port),
                 "--backend", backend, "--body-timeout", str(settings["BODY_TIMEOUT"]),
                 "--max-body", str(settings["MAX_CONTENT_LENGTH"])])
            front.append(proc)
            local = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
            deadline = time.monotonic() + 30
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection((local, args.port), timeout=1):
                    return  # listening
                time.sleep(0.05)
            log.error("the front did not start listening on %s; stopping", public)
            os.kill(os.getpid(), signal.SIGTERM)  # the master: gunicorn stops cleanly

        options = {
            "bind": f"unix:{backend}" if backend else public,
            "workers": args.workers,
            "worker_class": "gthread",
            "threads": args.threads,
            "preload_app": True,
            "timeout": args.timeout,
            "graceful_timeout": 20,
            "keepalive": 5,
            "accesslog": "-" if args.access_log else None,
            "errorlog": "-",
            "loglevel": "warning" if args.quiet else "info",
            "proc_name": "cvpipe-serve",
            "worker_tmp_dir": "/dev/shm" if Path("/dev/shm").is_dir() else None,
            # gunicorn >= 25.1 opens a control socket at one fixed path per user, which a
            # second server would fight over; cvpipe does not use it.
            "control_socket_disable": True,
        }
        log.info("serving %d model(s) (%s) from %s at %s with %d workers x %d threads; "
                 "open %s/ in a browser (API docs at /docs); Ctrl-C stops", len(reg), names, folder, url,
                 args.workers, args.threads, url)
        if app.config.get("API_TOKEN"):
            log.info("bearer-token authentication is on for predict and features (CVPIPE_API_TOKEN)")
        build_server(app, options, threads_per_worker, on_exit=cleanup,
                     switch_interval=args.switch_interval / 1000 if args.switch_interval else None,
                     when_ready=start_front if backend else None).run()
    finally:
        cleanup()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``cvpipe serve``."""
    default_workers = min(_cores(), 8)
    p = sub.add_parser(
        "serve", help="serve the models over REST (gunicorn)",
        description="Serve every model of the models folder over a REST API (POST "
        "/v1/models/<name>/predict, POST /v1/features, POST /v1/models/<name>/pictures, GET "
        "/v1/models, /v1/reports, /healthz, /readyz, /metrics, /openapi.json) with gunicorn, a page "
        "to classify images in the browser at / and interactive API docs at /docs. "
        "Set CVPIPE_API_TOKEN to require a bearer token on predict "
        "and features; limits: CVPIPE_MAX_IMAGES, CVPIPE_MAX_CONTENT_LENGTH, CVPIPE_MAX_PIXELS.")
    p.add_argument("--models", "--models-dir", dest="models", metavar="DIR",
                   help=f"models folder (default: {MODELS_DIR_DEFAULT})")
    p.add_argument("--reports", metavar="DIR",
                   help="comparison reports to list and open from the page at / (e.g. reports/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=default_workers,
                   help=f"worker processes (default: the cores, here {default_workers})")
    p.add_argument("--threads", type=int, default=8,
                   help="threads per worker (default 8; concurrent requests to a model share one call)")
    p.add_argument("--switch-interval", type=float, default=1.0, metavar="MS",
                   help="Python thread switch interval in the workers, in ms (default 1; Python's own "
                   "is 5): shorter trims tail latency when threads compete, 0 keeps Python's")
    p.add_argument("--timeout", type=int, default=60,
                   help="seconds before a stuck worker is restarted (default 60; 0: never)")
    p.add_argument("--max-images", type=int, help="images per request (default 512, $CVPIPE_MAX_IMAGES)")
    p.add_argument("--top-k", type=int, help="classes per image by default (default 5, $CVPIPE_TOP_K)")
    p.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    p.add_argument("--allow-no-models", action="store_true",
                   help="start even when no model loads (/readyz then answers 503)")
    p.add_argument("--check", action="store_true",
                   help="load and warm up the models, say what would be served, and exit")
    p.add_argument("--no-front", action="store_true",
                   help="let gunicorn listen itself, without the front that reads whole requests "
                   "before a worker sees them (behind a buffering proxy such as docs/nginx.conf)")
    p.set_defaults(func=_serve)
