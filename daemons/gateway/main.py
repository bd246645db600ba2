"""The gateway daemon: the Open Inference Protocol's REST and gRPC fronts over one `Front` to the master.

`infaas gateway` runs it in the foreground (SIGTERM/SIGINT stop it). It binds gateway.http_port and
gateway.grpc_port on gateway.host (0: a free port; TLS with gateway.tls_cert_file/tls_key_file), connects
to the master's client endpoint (CurveZMQ with security's client keys), and writes the bound endpoints
as JSON to `endpoints_file` for `infaas up`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

from infaas_cli.errors import InfaasError
from infaas_daemons.gateway.core import Front, FrontError
from infaas_daemons.gateway.rest import serve_rest

log = logging.getLogger("infaas.gateway")


def _grpc_server():
    """The gRPC front's `serve_grpc`, or None when this build lacks it (grpcio missing)."""
    try:
        from infaas_daemons.gateway.grpc_server import serve_grpc
    except ImportError as exc:
        log.warning("gRPC front unavailable (%s); serving REST only", exc)
        return None
    return serve_grpc


def _write_endpoints(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


async def serve(settings: Any, master: str, endpoints_file: Path | None = None,
                stop: asyncio.Event | None = None) -> None:
    """Run the fronts until `stop` is set (or SIGTERM/SIGINT when `stop` is None)."""
    g = settings.gateway
    tls = (g.tls_cert_file, g.tls_key_file) if g.tls_cert_file else None
    front = Front(master, timeout_s=settings.client.timeout_s, curve_keys=settings.security.client_keys())
    await front.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    runner = grpc_server = None
    try:
        runner, http_port = await serve_rest(front, g.host, g.http_port, tls)
        grpc_port = None
        serve_grpc = _grpc_server()
        if serve_grpc is not None:
            grpc_server, grpc_port = await serve_grpc(front, g.host, g.grpc_port, tls)
        scheme = "https" if tls else "http"
        record = {"pid": os.getpid(), "master": master, "host": g.host, "http_port": http_port,
                  "http": f"{scheme}://{g.host}:{http_port}", "grpc_port": grpc_port,
                  "grpc": f"{g.host}:{grpc_port}" if grpc_port else None, "tls": bool(tls)}
        if endpoints_file is not None:
            _write_endpoints(endpoints_file, record)
        log.info("gateway up: REST %s, gRPC %s, master %s", record["http"], record["grpc"] or "off", master)
        await stop.wait()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)
        if runner is not None:
            await runner.cleanup()
        await front.close()


def run(settings: Any, master: str | None = None, endpoints_file: str | Path | None = None,
        home: str | Path | None = None) -> None:
    """Run the gateway in the foreground: the master from `master`, else gateway.master, else client.master,
    else the endpoint `infaas up` recorded."""
    from infaas_cli.client import resolve_master

    endpoint = master or settings.gateway.master or resolve_master(None, home=home, settings=settings)
    if not endpoint:
        raise InfaasError("the gateway needs the master's client endpoint: --master, gateway.master, "
                          "client.master ($INFAAS_MASTER), or a cluster started with `infaas up`", code="bad_config")
    try:
        asyncio.run(serve(settings, endpoint, Path(endpoints_file) if endpoints_file else None))
    except FrontError as exc:
        raise InfaasError(exc.message, code=exc.code) from None
    except OSError as exc:  # a port in use, an interface that does not exist
        raise InfaasError(f"the gateway cannot listen on {settings.gateway.host}: {exc}", code="bad_config") from None
