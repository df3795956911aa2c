"""The method registry: built-in methods, methods registered at run time, and plugin packages.

A method is an object (usually a module's ``METHOD``) that honours the contract of
:class:`vireid.methods.base.Method` (documented in ``docs/architecture.md``, "Method contract"). Methods are
found, in this order, among:

1. methods registered in this process with :func:`register_method` (a plugin's own ``__init__`` or a user
   script);
2. the built-in methods, imported lazily by module name on first use (so ``import vireid`` stays cheap);
3. installed packages that declare an entry point in the group ``vireid.methods``, e.g. in their
   ``pyproject.toml``::

       [project.entry-points."vireid.methods"]
       mymethod = "my_package.my_method:METHOD"

   The entry point's name is the method's name; its object is a method instance or a class (instantiated
   without arguments). Entry points are read once, on the first lookup of a name that is not built in.

This module imports no method and nothing above the configuration layer: ``vireid.config`` asks it for a
method's config class, and the engine asks it for the method object.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import threading
from typing import Any

from vireid.errors import ConfigError

ENTRY_POINT_GROUP = "vireid.methods"

REQUIRED_ATTRIBUTES = ("config_class", "build_model")
"""What every method must provide to be registered (config parsing and model building)."""

TRAINING_HOOKS = ("build_train_loader", "forward", "loss")
"""What a method must also provide for ``vireid train`` (checked when training starts)."""

INFERENCE_HOOKS = ("embedder", "test_transform")
"""What a method must also provide for ``vireid test``/``index``/``search``/``export``."""

_BUILTIN: dict[str, str] = {
    "baseline": "vireid.methods.baseline",
    "idkl": "vireid.methods.idkl",
    "dakd": "vireid.methods.dakd",
    "dikdnet": "vireid.methods.dikdnet",
    "mce": "vireid.methods.mce",
}


class MethodRegistry:
    """Name -> method object, with lazy built-ins and lazily read entry points.

    One process-wide instance (:data:`REGISTRY`) backs :func:`register_method`, :func:`get_method` and
    :func:`available_methods`. Tests that add a method use :meth:`register` and :meth:`unregister` (or
    the ``overwrite`` flag), never the private tables.
    """

    def __init__(self, builtin: dict[str, str] | None = None, group: str = ENTRY_POINT_GROUP):
        self._builtin = dict(_BUILTIN if builtin is None else builtin)
        self._group = group
        self._registered: dict[str, Any] = {}
        self._loaded: dict[str, Any] = {}
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------------------------- registering

    def register(self, name: str, method: Any, *, overwrite: bool = False) -> Any:
        """Register ``method`` (an instance, or a class instantiated without arguments) under ``name``.

        Raises:
            ConfigError: ``name`` is taken (built-in, registered or a plugin) and ``overwrite`` is False, or
                the method lacks what every method must provide (the message lists what is missing).
        """
        key = _check_name(name)
        if not overwrite and key in self.names():
            raise ConfigError(
                f"a method named '{key}' already exists.",
                fix="choose another name, or pass overwrite=True to replace it.",
            )
        obj = _instantiate(method, where=f"register_method({key!r}, ...)")
        check_method(obj, key)
        with self._lock:
            self._registered[key] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Forget a method registered with :meth:`register` (built-ins and plugins stay)."""
        with self._lock:
            self._registered.pop(str(name), None)

    # ------------------------------------------------------------------------------------------- looking up

    def names(self) -> list[str]:
        """Every available method name, sorted (built-ins, registered ones and plugins)."""
        return sorted(set(self._builtin) | set(self._registered) | set(self._plugins()))

    def get(self, name: str) -> Any:
        """The method object of ``name``; :class:`ConfigError` (also a ``KeyError``-free message) otherwise."""
        key = str(name)
        if key in self._registered:
            return self._registered[key]
        if key in self._loaded:
            return self._loaded[key]
        if key in self._builtin:
            obj = importlib.import_module(self._builtin[key]).METHOD
        elif key in self._plugins():
            obj = self._load_plugin(key)
        else:
            raise UnknownMethodError(key, self.names())
        with self._lock:
            self._loaded[key] = obj
        return obj

    def source(self, name: str) -> str:
        """Where ``name`` comes from: ``registered``, ``builtin`` or ``plugin <distribution>``."""
        if name in self._registered:
            return "registered"
        if name in self._builtin:
            return "builtin"
        ep = self._plugins().get(name)
        if ep is None:
            raise UnknownMethodError(name, self.names())
        dist = getattr(ep, "dist", None)
        return f"plugin {dist.name}" if dist is not None else "plugin"

    def copy(self) -> MethodRegistry:
        """An independent registry with the same entries (tests swap it in for :data:`REGISTRY` with
        ``monkeypatch.setattr(vireid.methods.registry, "REGISTRY", REGISTRY.copy())`` so that what they
        register disappears afterwards)."""
        other = MethodRegistry(self._builtin, self._group)
        other._registered = dict(self._registered)
        other._loaded = dict(self._loaded)
        other._entry_points = None if self._entry_points is None else dict(self._entry_points)
        return other

    def refresh(self) -> None:
        """Read the entry points again (after installing a plugin package in a running process)."""
        with self._lock:
            self._entry_points = None
            self._loaded = {k: v for k, v in self._loaded.items() if k in self._builtin}

    # ---------------------------------------------------------------------------------------------- plugins

    def _plugins(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._entry_points is None:
            found = {}
            for ep in importlib.metadata.entry_points(group=self._group):
                found.setdefault(ep.name, ep)  # the first installed distribution wins, as for console scripts
            self._entry_points = found
        return self._entry_points

    def _load_plugin(self, name: str) -> Any:
        ep = self._plugins()[name]
        where = f"entry point '{name} = {ep.value}' (group {self._group})"
        try:
            loaded = ep.load()
        except Exception as exc:  # a broken plugin must name itself, not fail deep inside importlib
            raise ConfigError(
                f"the method plugin {where} cannot be imported: {type(exc).__name__}: {exc}",
                fix="reinstall the package that provides it, or uninstall it.",
            ) from exc
        obj = _instantiate(loaded, where=where)
        check_method(obj, name)
        return obj


class UnknownMethodError(ConfigError, KeyError):
    """No method of that name is built in, registered or installed as a plugin."""

    def __init__(self, name: str, available: list[str]):
        import difflib

        near = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
        hint = f" Did you mean '{near[0]}'?" if near else ""
        super().__init__(
            f"unknown method '{name}'.{hint} available: {', '.join(available)}.",
            fix="register your own with vireid.register_method(name, cls) or a 'vireid.methods' entry point.",
        )

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


def _check_name(name: str) -> str:
    key = str(name)
    if not key or not key.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"method name {name!r} must be a non-empty word (letters, digits, '_' or '-').")
    return key


def _instantiate(method: Any, *, where: str) -> Any:
    if isinstance(method, type):
        try:
            return method()
        except TypeError as exc:
            raise ConfigError(
                f"{where}: the class {method.__qualname__} cannot be built without arguments ({exc}).",
                fix="register an instance instead of the class.",
            ) from None
    return method


def check_method(method: Any, name: str) -> None:
    """Raise :class:`ConfigError` naming what ``method`` lacks of the registration contract."""
    missing = [a for a in REQUIRED_ATTRIBUTES if not hasattr(method, a)]
    if missing:
        raise ConfigError(
            f"method '{name}' ({type(method).__qualname__}) lacks {', '.join(missing)}.",
            fix="see 'Method contract' in docs/architecture.md for what a method provides.",
        )
    cls = method.config_class
    # Checked by shape, not with issubclass(RunConfig): vireid.config asks this module for config classes,
    # so importing it here would tie the two modules in a circle. vireid.config.config_class_for checks
    # the subclass relation when it builds a config.
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ConfigError(
            f"method '{name}': config_class must be a dataclass subclass of vireid.config.RunConfig, not {cls!r}."
        )
    if not getattr(method, "name", None):
        method.name = name


def missing_hooks(method: Any, hooks: tuple[str, ...]) -> list[str]:
    """The hooks of ``hooks`` that ``method`` does not provide."""
    return [h for h in hooks if not callable(getattr(method, h, None))]


REGISTRY = MethodRegistry()


def register_method(name: str, method: Any, *, overwrite: bool = False) -> Any:
    """Add a method under ``name`` so that configs with ``method: <name>`` train and load it.

    ``method`` is an instance or a class (instantiated without arguments) that honours the method contract
    (``docs/architecture.md``). Returns the registered instance.
    """
    return REGISTRY.register(name, method, overwrite=overwrite)


def unregister_method(name: str) -> None:
    """Remove a method added with :func:`register_method`."""
    REGISTRY.unregister(name)


def available_methods() -> list[str]:
    """Every method name: built-ins, registered methods and installed plugins, sorted."""
    return REGISTRY.names()


def get_method(name: str) -> Any:
    """The method object of ``name``; raises :class:`UnknownMethodError` (a ``ConfigError`` and a
    ``KeyError``) listing the available names otherwise."""
    return REGISTRY.get(name)
