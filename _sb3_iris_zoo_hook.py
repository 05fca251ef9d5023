"""Start-up hook that registers IRIS with RL Zoo (``rl_zoo3``), installed by ``sb3_iris_zoo.pth``.

rl_zoo3 has no plugin mechanism, so ``pip install sb3-iris`` puts a one-line ``.pth`` file in
site-packages (``import _sb3_iris_zoo_hook``). This module only installs a ``sys.meta_path``
finder: it imports nothing but ``sys`` and ``os`` (both already loaded by ``site``) and costs about
0.2 ms at start-up (``python -X importtime -c pass``), mostly reading its own ``.pyc``.
When ``rl_zoo3.utils``, ``rl_zoo3.hyperparams_opt`` or ``rl_zoo3.exp_manager`` has finished
importing, the finder hands the module to :func:`sb3_iris.zoo.patch_module`, which adds ``iris`` to
``ALGOS``, the ``-optimize`` sampler, and the packaged default ``iris.yml``. ``sb3_iris`` (and so
torch) is imported at that moment only, never at interpreter start-up. Any failure is a warning,
never a crash; ``python -m sb3_iris.zoo train ...`` does the same registration explicitly.

Set ``SB3_IRIS_NO_ZOO_HOOK=1`` to disable the hook. Editable installs copy this file into
site-packages: reinstall after editing it.
"""

import sys

_TARGETS = ("rl_zoo3.utils", "rl_zoo3.hyperparams_opt", "rl_zoo3.exp_manager")


def _warn(message):
    import warnings

    warnings.warn(f"sb3-iris RL Zoo hook: {message}", RuntimeWarning, stacklevel=3)


def _after_import(module):
    """Called right after one of the target modules finished executing."""
    try:
        from sb3_iris import zoo
    except Exception as exc:  # never break the rl_zoo3 import
        _warn(
            f"could not import sb3_iris.zoo to register IRIS in {module.__name__} ({exc!r}); "
            "`--algo iris` may be unavailable, try `python -m sb3_iris.zoo train ...`"
        )
        return
    try:
        zoo.patch_module(module)
    except Exception as exc:  # patch_module warns itself; belt and braces
        _warn(f"registering IRIS in {module.__name__} failed ({exc!r})")


class _PatchingLoader:
    """Wraps a module loader: runs the module, then patches it. Everything else is delegated."""

    def __init__(self, loader):
        self._sb3_iris_loader = loader

    def __getattr__(self, name):
        if name == "_sb3_iris_loader":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._sb3_iris_loader, name)

    def create_module(self, spec):
        return self._sb3_iris_loader.create_module(spec)

    def exec_module(self, module):
        self._sb3_iris_loader.exec_module(module)
        if _finder is not None:
            _finder.done(module.__name__)
        _after_import(module)


class RLZooPatchFinder:
    """``sys.meta_path`` finder that wraps the loaders of the rl_zoo3 modules IRIS patches."""

    def __init__(self):
        self.pending = set(_TARGETS)
        self._searching = set()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending or fullname in self._searching:
            return None
        self._searching.add(fullname)
        try:
            spec = None
            for finder in sys.meta_path:
                find_spec = getattr(finder, "find_spec", None)
                if finder is self or find_spec is None:
                    continue
                spec = find_spec(fullname, path, target)
                if spec is not None:
                    break
        except Exception:  # let the normal import machinery report it
            return None
        finally:
            self._searching.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _PatchingLoader(spec.loader)
        return spec

    def done(self, fullname):
        """``fullname`` was executed and handed over: stop watching it, and leave once all were seen."""
        self.pending.discard(fullname)
        if not self.pending:
            uninstall()


_finder = None


def install():
    """Put the finder first on ``sys.meta_path`` (idempotent). Returns it, or None if disabled."""
    global _finder
    import os

    if os.environ.get("SB3_IRIS_NO_ZOO_HOOK", "") not in ("", "0"):
        return None
    if _finder is None:
        _finder = RLZooPatchFinder()
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    return _finder


def uninstall():
    """Remove the finder from ``sys.meta_path`` (once all target modules were seen)."""
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)


try:
    # Modules that were imported before the hook (unusual) are patched by sb3_iris.zoo.register().
    install()
except Exception as _exc:  # a .pth hook must never break start-up
    _warn(f"could not install the import hook ({_exc!r})")
