"""charter: align an open-weights chat model to a written constitution with AI feedback.

Public API: `load_config`, `load_constitution`, `get_backend`, `get_supervisor`, `Run`.
Importing charter imports neither torch nor any model engine.
"""
from .config import RunConfig, load_config  # noqa: F401
from .constitution import Constitution, load_constitution  # noqa: F401
from .errors import CharterError  # noqa: F401

__version__ = "0.1.0"


def get_backend(spec: str, **kw):
    from .backends import get_backend as _get

    return _get(spec, **kw)


def get_supervisor(spec: str, **kw):
    from .supervise import get_supervisor as _get

    return _get(spec, **kw)
