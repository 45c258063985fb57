"""The lab's services, one package each, all built the same way (docs/architecture.md, "A service"):

- `parts.py`    `Parts`: a dataclass of everything the routes use, built once per process by
                `Parts.from_lab(lab)` (store, signers, clients, logs, the service's typed settings);
- `app.py`      `create_app(parts: Parts) -> FastAPI`: the routes (transport only), the lab admin
                endpoints (`cmglab.runtime.admin`) and the error handler;
- `errors.py`   the service's typed errors, each rendering itself in that protocol's own shape, and
                `install_error_handler(app)`: the one handler (`cmglab.runtime.errors`);
- `service.py`  `build(lab) -> Service`: the listeners (ports, TLS) and background tasks `cmglab serve` runs;
- `settings.py` the service's own `CMGLAB_<SERVICE>_*` settings (pydantic-settings), where it has any;
- `store.py`    the service's tables on `cmglab.runtime.db.Store` (typed session, `fill`, `seed`, `reset`),
                where it keeps any.

A service never imports another one: they meet in `cmglab.wire` (tests/test_architecture.py).
"""
