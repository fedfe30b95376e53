"""Wiring behind ``distillguard serve`` / ``gateway``: build the enforcer, the app, and run uvicorn."""

from __future__ import annotations

import gc
from pathlib import Path

from distillguard.core.config import load_config
from distillguard.core.errors import ConfigError
from distillguard.enforce.online import BatchContentSignals, build_enforcer
from distillguard.enforce.service import ContentWorker, create_app, http_protocol
from distillguard.enforce.settings import EnforceSettings


def run_service(
    config_path: Path | None,
    host: str | None,
    port: int | None,
    backend: str | None,
    redis_url: str | None,
    campaigns: Path | None,
    insecure_no_auth: bool,
    gateway_upstream: str | None,
    logdir: Path | None,
) -> None:
    """Start the decision service, or the gateway when ``gateway_upstream`` is given."""
    import uvicorn

    config = load_config(config_path)
    if campaigns is not None:
        config["enforce"]["known_campaigns"]["results_dir"] = str(campaigns)
    settings = EnforceSettings.from_config(config)
    if gateway_upstream is None and settings.api_key is None and not insecure_no_auth:
        raise ConfigError(
            "no bearer key configured: set enforce.service.api_key or $DISTILLGUARD_API_KEY "
            "(or pass --insecure-no-auth on loopback)"
        )
    enforcer = build_enforcer(config, backend=backend, redis_url=redis_url)
    content = BatchContentSignals(
        config, intel=enforcer.intel, capability_model=settings.capability_model
    )
    worker = ContentWorker(enforcer, content)
    worker.start()
    if gateway_upstream is not None:
        from distillguard.enforce.gateway import create_gateway

        assert logdir is not None
        app = create_gateway(enforcer, gateway_upstream, logdir, worker=worker)
    else:
        app = create_app(
            enforcer, api_key=None if insecure_no_auth else settings.api_key, worker=worker
        )
    # Everything loaded so far (libraries, models, config) lives for the whole process: moving it
    # out of the collector's generations keeps full collections, the service's tail latency
    # outliers, proportional to the online state alone.
    gc.collect()
    gc.freeze()
    try:
        uvicorn.run(app, host=host or settings.host, port=port or settings.port, log_level="warning",
                    access_log=False, http=http_protocol(app))  # fmt: skip
    finally:
        worker.stop()
