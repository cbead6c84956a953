"""`headwater witness serve`: the second-party witness of chain-head checkpoints (run by
someone other than the operator, with its own key and store; see docs/compliance.md)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import click

from headwater.errors import ConfigError
from headwater.logs import status

_File = click.Path(path_type=Path, dir_okay=False)


@click.group()
def witness() -> None:
    """A second party's witness: keeps signed chain-head checkpoints, countersigns them."""


def trusted_keys(specs: tuple[str, ...]) -> dict[str, Any]:
    """--trust [PRODUCER=]PEM, by key id: a key for any producer's chain, or only for one."""
    from headwater.query_service.compliance.signing import key_id, load_public_key
    from headwater.query_service.compliance.witness import Trusted

    out: dict[str, Trusted] = {}
    for spec in specs:
        producer, _, pem = spec.rpartition("=") if "=" in spec else ("", "", spec)
        if "=" in spec and not producer:
            raise ConfigError(f"--trust {spec!r}: the producer id before '=' is empty")
        key = load_public_key(Path(pem))
        out[key_id(key)] = Trusted(key, producer or None)
    return out


@witness.command("serve")
@click.option("--key", "key_file", type=_File, required=True,
              help="The witness's own Ed25519 private key (PEM) that signs receipts")
@click.option("--store", "store_file", type=_File, required=True,
              help="The witness's append-only receipt file (created if absent)")
@click.option("--trust", "trust", multiple=True, metavar="[PRODUCER=]PEM",
              help="A public key whose checkpoints are accepted (repeat); PRODUCER= limits "
                   "it to that producer's chain")
@click.option("--listen", default="127.0.0.1:8790", show_default=True,
              help="HTTP address HOST:PORT (port 0: any free port)")
@click.option("--max-skew-s", type=click.FloatRange(1, 86400), default=300.0,
              show_default=True, help="Refuse checkpoints written further than this from "
                                      "the witness's clock")
@click.option("--tls-cert", type=_File, default=None,
              help="Server certificate (PEM): serve HTTPS; required off loopback")
@click.option("--tls-key", type=_File, default=None, help="Its private key (PEM)")
def serve(key_file: Path, store_file: Path, trust: tuple[str, ...], listen: str,
          max_skew_s: float, tls_cert: Path | None, tls_key: Path | None) -> None:
    """Serve the witness until interrupted: accept checkpoints signed by a trusted key that
    neither shorten nor rewrite a chain it holds, answer each with a receipt signed by
    --key and its own time, keep the receipts in --store."""
    from headwater.query_service.compliance.signing import key_id, load_private_key
    from headwater.query_service.compliance.witness_server import (
        ReceiptFile,
        WitnessService,
        make_server,
    )

    key = load_private_key(key_file)
    service = WitnessService(ReceiptFile(store_file), key, trusted_keys(trust), max_skew_s)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together")
    server = make_server(service, listen, (tls_cert, tls_key) if tls_cert and tls_key
                         else None)
    host, port = server.server_address[:2]
    scheme = "https" if tls_cert else "http"

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    status(f"headwater witness: serving {scheme}://{host}:{port} (key {key_id(key.public_key())}, "
           f"{len(service.log.receipts)} receipt(s) held in {store_file}, "
           f"{len(trust)} trusted key(s))")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        service.close()
        status("headwater witness: stopped")
